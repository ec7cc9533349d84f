/** Test certificates made with the openssl CLI into a temporary directory (EC P-256: fast). */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Pem {
  cert: string;
  key: string;
  /** Contents. */
  certPem: Buffer;
  keyPem: Buffer;
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

export class TestPki {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'pgbg-tls-'));

  /** A self-signed CA. */
  ca(name: string): Pem {
    openssl(
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`,
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
        '-keyout', `${name}.key`, '-out', `${name}.crt`],
      this.dir,
    );
    return this.pem(name);
  }

  /** A leaf certificate for 127.0.0.1 and localhost signed by `ca`, with the given serial (hex). */
  leaf(name: string, ca: Pem, serialHex: string, cn = name): Pem {
    writeFileSync(
      path.join(this.dir, `${name}.ext`),
      'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n',
    );
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`], this.dir);
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', `0x${serialHex}`, '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.crt`], this.dir);
    return this.pem(name);
  }

  private pem(name: string): Pem {
    const cert = path.join(this.dir, `${name}.crt`);
    const key = path.join(this.dir, `${name}.key`);
    return { cert, key, certPem: readFileSync(cert), keyPem: readFileSync(key) };
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
