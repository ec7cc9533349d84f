const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  sec: 1000,
  min: 60_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** Parses "500ms", "30s", "10min", "2h", "1d" or a bare number of milliseconds. */
export function parseDuration(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  if (!m) return null;
  const unit = (m[2] || 'ms').toLowerCase();
  const factor = UNITS[unit];
  if (factor === undefined) return null;
  return Math.round(Number(m[1]) * factor);
}
