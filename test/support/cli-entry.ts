// Runs the CLI from source (through tsx), so tests can start real proxy processes without a build.
import { main } from '../../src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
