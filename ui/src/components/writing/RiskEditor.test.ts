import { afterEach, expect, it } from 'vitest';
import { cleanup, render } from '@testing-library/svelte';
import RiskEditor from './RiskEditor.svelte';
import type { Finding } from '../../lib/types';

afterEach(cleanup);

const finding = (start: number, end: number, matched: string, severity: 'H' | 'M' | 'L', verdict: Finding['verdict'] = 'violation'): Finding => ({
  rule: 'A1', pack: 'base', category: '极限词', severity, verdict, matched, start, end, start_utf16: start, end_utf16: end,
  basis_zh: '', basis_en: '', reason_zh: '', reason_en: '', suggestions: [], exception: null,
});

it('underlines each finding by severity in a mirror that holds the same text, as text', () => {
  const value = '<b>全网最低价</b>，据检测数据';
  const { container } = render(RiskEditor, { value, findings: [finding(3, 8, '全网最低价', 'H'), finding(13, 19, '据检测数据', 'M', 'needs_evidence')] });
  const mirror = container.querySelector('.mirror')!;
  expect(mirror.textContent).toBe(`${value}\n`);
  expect(mirror.querySelector('b')).toBeNull();
  const marks = [...mirror.querySelectorAll('mark')];
  expect(marks.map((m) => [m.textContent, m.className.split(' ').find((c) => ['high', 'evidence'].includes(c))])).toEqual([
    ['全网最低价', 'high'],
    ['据检测数据', 'evidence'],
  ]);
  expect((container.querySelector('textarea') as HTMLTextAreaElement).value).toBe(value);
});

it('shows no marks when there are no findings for the text', () => {
  const { container } = render(RiskEditor, { value: '全网最低价', findings: [] });
  expect(container.querySelectorAll('mark').length).toBe(0);
});
