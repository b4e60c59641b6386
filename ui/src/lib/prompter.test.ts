import { describe, expect, it } from 'vitest';
import { Prompter, layout, MAX_SPEED } from './prompter';
import type { Script, Segment, ScriptLine } from './types';

const line = (text: string, est_secs: number): ScriptLine => ({ text, alts: [], est_secs, findings: [], unknown_numbers: [] });
const seg = (kind: Segment['kind'], target: number, lines: ScriptLine[]): Segment => ({
  kind, product: 0, start_secs: 0, target_secs: target, est_secs: lines.reduce((a, l) => a + l.est_secs, 0),
  host: lines, assistant: [], screen: [], cues: [], status: lines.length ? 'written' : 'placeholder', note: '', locked: false,
});
const script = (): Script => ({
  schema_version: 1, kind: 'product', title: 't', model: 'm', seed: 1, products: [],
  show: { platform: '', slot_min: 1, host_name: '', host_style: '', catch_phrases: [], virtual_host: false, tempo: 'standard', chars_per_min: null, language: 'zh' },
  segments: [seg('hook', 10, [line('a', 4), line('b', 4)]), seg('pain', 10, []), seg('selling', 5, [line('c', 6)])],
});

describe('prompter', () => {
  it('lays lines end to end and skips empty segments', () => {
    const l = layout(script());
    expect(l.lines.map((x) => x.start)).toEqual([0, 4, 8]);
    expect(l.segStart).toEqual([0, 8, 8]);
    expect(l.total).toBe(14);
  });

  it('counts down 3-2-1, then reads at the chosen speed; space pauses', () => {
    const p = new Prompter(script());
    p.toggle();
    p.tick(2);
    expect(p.running).toBe(false);
    p.tick(1);
    expect(p.running).toBe(true);
    p.tick(5);
    expect(p.line()).toBe(1);
    p.toggle();
    p.tick(10);
    expect(p.t).toBe(5);
    // Twice the rate: the script's time runs twice as fast.
    p.speed = 440 > MAX_SPEED ? MAX_SPEED : 440;
    p.toggle();
    p.tick(3);
    p.tick(1);
    expect(p.t).toBeCloseTo(5 + 420 / 220);
  });

  it('arrows change the speed within bounds', () => {
    const p = new Prompter(script());
    for (let i = 0; i < 100; i++) p.faster();
    expect(p.speed).toBe(420);
    for (let i = 0; i < 100; i++) p.slower();
    expect(p.speed).toBe(60);
  });

  it('PgDn and PgUp jump between segments with lines; the segment clock restarts and shows overrun', () => {
    const p = new Prompter(script());
    p.jump(1);
    expect(p.segment()).toBe(2);
    expect(p.t).toBe(8);
    p.running = true;
    p.tick(6);
    expect(p.remaining()).toBeLessThan(0);
    p.jump(-1);
    expect(p.segment()).toBe(2);
    expect(p.t).toBe(8);
    p.jump(-1);
    expect(p.segment()).toBe(0);
    expect(p.remaining()).toBe(10);
  });
});
