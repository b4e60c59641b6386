// Laying a compliance report over the editor's text: the text cut into plain runs and risky
// runs (UTF-16 offsets, as JavaScript strings count), and the finding under the caret.
import type { Finding } from './types';

export interface Segment {
  text: string;
  finding: Finding | null;
}

/** `text` cut at the findings' spans; overlapping spans are clipped so every character shows once. */
export function segments(text: string, findings: Finding[]): Segment[] {
  const sorted = [...findings].sort((a, b) => a.start_utf16 - b.start_utf16 || b.end_utf16 - a.end_utf16);
  const out: Segment[] = [];
  let at = 0;
  for (const f of sorted) {
    const start = Math.max(f.start_utf16, at);
    const end = Math.min(f.end_utf16, text.length);
    if (end <= start) continue;
    if (start > at) out.push({ text: text.slice(at, start), finding: null });
    out.push({ text: text.slice(start, end), finding: f });
    at = end;
  }
  if (at < text.length) out.push({ text: text.slice(at), finding: null });
  return out;
}

/** The findings touching `[start, end)` (a caret is `start === end`, touching either edge counts). */
export function findingsAt(findings: Finding[], start: number, end: number = start): Finding[] {
  return findings.filter((f) => (start === end ? f.start_utf16 <= start && start <= f.end_utf16 : f.start_utf16 < end && start < f.end_utf16));
}

/** Safer phrasings that can replace the span as they are (not patterns like “X 天” or notes in brackets). */
export function replacements(f: Finding): string[] {
  return f.suggestions.filter((s) => !/X|（|\(/.test(s));
}

/** Severity level names (the rule packs' H / M / L). */
export const SEVERITY = { H: 'high', M: 'medium', L: 'low' } as const;

/** The CSS class a finding is marked with: its severity, or `evidence` when it needs evidence. */
export function severityClass(f: Finding): 'high' | 'medium' | 'low' | 'evidence' {
  return f.verdict === 'needs_evidence' ? 'evidence' : SEVERITY[f.severity];
}
