import { describe, expect, it } from 'vitest';
import { diffStats, textDiff } from './diff';
import { findingsAt, replacements, segments } from './findings';
import type { Finding } from './types';

const finding = (start: number, end: number, matched: string, suggestions: string[] = []): Finding => ({
  rule: 'A1', pack: 'base', category: '极限词', severity: 'H', verdict: 'violation', matched,
  start, end, start_utf16: start, end_utf16: end, basis_zh: '', basis_en: '', reason_zh: '', reason_en: '',
  suggestions, exception: null,
});

describe('textDiff', () => {
  it('reads a rewritten Chinese phrase as one deletion and one insertion', () => {
    const d = textDiff('这是全网最低价的面霜', '这是全网好价格的面霜');
    expect(d).toEqual([
      { kind: 'same', text: '这是全网' },
      { kind: 'del', text: '最低价' },
      { kind: 'add', text: '好价格' },
      { kind: 'same', text: '的面霜' },
    ]);
    expect(diffStats(d)).toEqual({ added: 3, removed: 3 });
  });

  it('diffs English by words and keeps both sides whole', () => {
    const before = 'The best cream on the market.';
    const after = 'A gentle cream on the market.';
    const d = textDiff(before, after);
    expect(d.filter((p) => p.kind !== 'add').map((p) => p.text).join('')).toBe(before);
    expect(d.filter((p) => p.kind !== 'del').map((p) => p.text).join('')).toBe(after);
    expect(d.find((p) => p.kind === 'del')?.text).toContain('best');
  });

  it('finds nothing to change in equal texts', () => {
    expect(textDiff('一样', '一样')).toEqual([{ kind: 'same', text: '一样' }]);
  });
});

describe('segments', () => {
  it('cuts the text at the findings and keeps every character once', () => {
    const text = '😀最佳效果，国家级品质';
    const f1 = finding(2, 4, '最佳');
    const f2 = finding(7, 10, '国家级');
    const s = segments(text, [f2, f1]);
    expect(s.map((x) => x.text).join('')).toBe(text);
    expect(s.filter((x) => x.finding).map((x) => x.text)).toEqual(['最佳', '国家级']);
  });

  it('clips overlapping and out-of-range spans', () => {
    const text = '全网最低价';
    const s = segments(text, [finding(0, 4, '全网最低'), finding(2, 5, '最低价'), finding(9, 12, 'gone')]);
    expect(s.map((x) => x.text)).toEqual(['全网最低', '价']);
  });
});

describe('findingsAt', () => {
  const fs = [finding(2, 4, '最佳'), finding(7, 10, '国家级')];
  it('finds the finding under the caret, edges included', () => {
    expect(findingsAt(fs, 3).map((f) => f.matched)).toEqual(['最佳']);
    expect(findingsAt(fs, 4).map((f) => f.matched)).toEqual(['最佳']);
    expect(findingsAt(fs, 5)).toEqual([]);
  });
  it('finds those a selection overlaps', () => {
    expect(findingsAt(fs, 0, 8).length).toBe(2);
    expect(findingsAt(fs, 4, 7)).toEqual([]);
  });
});

it('offers only phrasings that can stand in for the span', () => {
  expect(replacements(finding(0, 2, '最佳', ['优秀', 'X 天见效', '（删除）', '好用']))).toEqual(['优秀', '好用']);
});

import { hashtags, titleChars } from './limits';

it('measures the title and the hashtags as platforms do', () => {
  const note = '\n  冬天通勤神器😀 \n正文……\n#保温杯 #通勤好物 #保温杯\n#微博话题#';
  expect(titleChars(note)).toBe(7);
  expect(hashtags(note)).toBe(3);
  expect(hashtags('没有话题')).toBe(0);
});
