// Live-script helpers for the screens: empty forms, times, and a line cut into runs with its
// risky words and invented numbers marked (UTF-16 offsets, as the engine reports them).
import { segments, severityClass } from './findings';
import type { Finding, Product, ScriptLine, ShowSettings } from './types';

export function emptyProduct(): Product {
  return {
    name: '', category: '', selling_points: [{ feature: '', advantage: '', benefit: '', proof: '' }], audience: '',
    scenarios: [], daily_price: null, live_price: null, price_basis: '', mechanism: [], stock: null, link_no: null,
    specs: [], faq: [], brand_facts: [], certificates: [], forbidden_claims: [],
  };
}

export function defaultShow(language: 'zh' | 'en' = 'zh'): ShowSettings {
  return { platform: 'douyin', slot_min: 5, host_name: '', host_style: '', catch_phrases: [], virtual_host: false, tempo: 'standard', chars_per_min: null, language };
}

/** `m:ss`. */
export function clock(secs: number): string {
  const s = Math.max(0, Math.round(secs));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/** Signed `-m:ss` for a countdown past zero. */
export function signedClock(secs: number): string {
  return secs < 0 ? `-${clock(-secs)}` : clock(secs);
}

export interface Run {
  text: string;
  /** `high|medium|low|evidence` for a finding, `number` for a number the facts lack. */
  mark: string | null;
  title: string;
}

export function lineRuns(line: ScriptLine, lang: string): Run[] {
  const numbers: Finding[] = line.unknown_numbers.map(
    (u) => ({ start_utf16: u.start_utf16, end_utf16: u.end_utf16, rule: '#', matched: u.text }) as unknown as Finding,
  );
  return segments(line.text, [...line.findings, ...numbers]).map((s) => {
    if (!s.finding) return { text: s.text, mark: null, title: '' };
    if (s.finding.rule === '#') {
      return { text: s.text, mark: 'number', title: lang === 'en' ? 'Not in the product facts: check this number' : '商品信息里没有这个数字，请核实' };
    }
    return { text: s.text, mark: severityClass(s.finding), title: lang === 'en' ? s.finding.reason_en : s.finding.reason_zh };
  });
}

/** One item per line, blank lines dropped (list fields of the product form). */
export function lines(text: string): string[] {
  return text.split('\n').map((s) => s.trim()).filter(Boolean);
}
