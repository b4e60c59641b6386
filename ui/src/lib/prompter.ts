// The teleprompter's clock, kept apart from the screen so it can be tested: host lines laid
// end to end on the script's own time (each line's estimate at the script's rate), a read
// position that advances at the chosen speed, segments to jump between, and the time spent
// in the current segment against its target.
import type { Script, ScriptLine } from './types';

export const MIN_SPEED = 60;
export const MAX_SPEED = 420;
export const SPEED_STEP = 10;
export const COUNTDOWN_SECS = 3;

export interface PromptLine {
  segment: number;
  index: number;
  line: ScriptLine;
  /** Start and length on the script's time (seconds at the script's rate). */
  start: number;
  dur: number;
}

export function scriptRate(s: Script): number {
  if (s.show.chars_per_min) return s.show.chars_per_min;
  return { explain: 180, standard: 220, push: 270 }[s.show.tempo] ?? 220;
}

export function layout(s: Script): { lines: PromptLine[]; segStart: number[]; total: number } {
  const lines: PromptLine[] = [];
  const segStart: number[] = [];
  let t = 0;
  s.segments.forEach((seg, si) => {
    segStart.push(t);
    seg.host.forEach((line, index) => {
      const dur = Math.max(0.5, line.est_secs);
      lines.push({ segment: si, index, line, start: t, dur });
      t += dur;
    });
  });
  return { lines, segStart, total: t };
}

export class Prompter {
  /** Position on the script's time. */
  t = 0;
  speed: number;
  running = false;
  /** Seconds left of the 3-2-1 countdown (0 when none is running). */
  countdown = 0;
  /** Real seconds spent in the current segment. */
  inSegment = 0;
  readonly rate: number;
  readonly lines: PromptLine[];
  readonly segStart: number[];
  readonly total: number;
  private lastSegment = 0;

  constructor(private script: Script) {
    this.rate = scriptRate(script);
    this.speed = this.rate;
    const l = layout(script);
    this.lines = l.lines;
    this.segStart = l.segStart;
    this.total = l.total;
  }

  /** Space: start (after the countdown) or pause. */
  toggle() {
    if (this.running || this.countdown > 0) {
      this.running = false;
      this.countdown = 0;
    } else if (this.t >= this.total) {
      this.restart();
      this.countdown = COUNTDOWN_SECS;
    } else {
      this.countdown = COUNTDOWN_SECS;
    }
  }

  restart() {
    this.t = 0;
    this.inSegment = 0;
    this.lastSegment = 0;
    this.running = false;
  }

  faster() {
    this.speed = Math.min(MAX_SPEED, this.speed + SPEED_STEP);
  }

  slower() {
    this.speed = Math.max(MIN_SPEED, this.speed - SPEED_STEP);
  }

  /** Advances by `dt` real seconds. */
  tick(dt: number) {
    if (this.countdown > 0) {
      this.countdown = Math.max(0, this.countdown - dt);
      if (this.countdown === 0) this.running = true;
      return;
    }
    if (!this.running) return;
    this.t = Math.min(this.total, this.t + (dt * this.speed) / this.rate);
    this.inSegment += dt;
    const seg = this.segment();
    if (seg !== this.lastSegment) {
      this.lastSegment = seg;
      this.inSegment = 0;
    }
    if (this.t >= this.total) this.running = false;
  }

  /** The line being read (-1 when the script has no host line). */
  line(): number {
    if (this.lines.length === 0) return -1;
    let i = this.lines.findIndex((l) => this.t < l.start + l.dur);
    if (i < 0) i = this.lines.length - 1;
    return i;
  }

  segment(): number {
    const i = this.line();
    if (i >= 0) return this.lines[i].segment;
    return 0;
  }

  /** PgUp/PgDn: to the start of the previous/next segment that has lines. */
  jump(delta: 1 | -1) {
    const current = this.segment();
    const n = this.script.segments.length;
    let target = current;
    for (let s = current + delta; s >= 0 && s < n; s += delta) {
      if (this.script.segments[s].host.length > 0) {
        target = s;
        break;
      }
    }
    // PgUp inside a segment first goes back to its own start.
    if (delta === -1 && this.t > this.segStart[current] + 0.01) target = current;
    this.t = this.segStart[target] ?? 0;
    this.lastSegment = target;
    this.inSegment = 0;
  }

  /** Seconds left of the segment's target (negative: overrun). */
  remaining(): number {
    const seg = this.script.segments[this.segment()];
    return seg ? seg.target_secs - this.inSegment : 0;
  }
}
