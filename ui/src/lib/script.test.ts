import { describe, expect, it } from 'vitest';
import { clock, lineRuns, lines, signedClock } from './script';
import type { Finding, ScriptLine } from './types';

describe('script helpers', () => {
  it('cuts a line into plain runs, risky words and invented numbers (UTF-16 offsets)', () => {
    const text = '😀全网最低价，只要 99 元';
    const at = (s: string) => text.indexOf(s);
    const finding = { rule: 'A1', severity: 'H', verdict: 'violation', matched: '最低价', start_utf16: at('最低价'), end_utf16: at('最低价') + 3, reason_zh: '极限词', reason_en: 'absolute term' } as unknown as Finding;
    const line: ScriptLine = { text, alts: [], est_secs: 3, findings: [finding], unknown_numbers: [{ text: '99 元', start_utf16: at('99'), end_utf16: at('99') + 4 }] };
    const runs = lineRuns(line, 'zh-CN');
    expect(runs.map((r) => r.text).join('')).toBe(text);
    expect(runs.filter((r) => r.mark).map((r) => [r.text, r.mark])).toEqual([['最低价', 'high'], ['99 元', 'number']]);
    expect(runs.find((r) => r.mark === 'high')?.title).toBe('极限词');
  });

  it('formats times and list fields', () => {
    expect(clock(65)).toBe('1:05');
    expect(signedClock(-7)).toBe('-0:07');
    expect(lines(' a \n\n b\n')).toEqual(['a', 'b']);
  });
});
