import { describe, expect, it } from 'vitest';
import { gridWindow } from './gallery';

describe('gridWindow', () => {
  it('lays out columns as auto-fill minmax(112px, 1fr) does', () => {
    // 4 tiles of 112 and 3 gaps of 6 need 466 px; one pixel less gives 3 columns.
    expect(gridWindow({ width: 466, viewTop: 0, viewHeight: 100, total: 10 }).cols).toBe(4);
    expect(gridWindow({ width: 465, viewTop: 0, viewHeight: 100, total: 10 }).cols).toBe(3);
    const g = gridWindow({ width: 465, viewTop: 0, viewHeight: 100, total: 10 });
    expect(g.tile).toBeCloseTo((465 - 2 * 6) / 3);
    expect(g.height).toBeCloseTo(4 * g.rowHeight - 6);
    expect(gridWindow({ width: 50, viewTop: 0, viewHeight: 100, total: 3 }).cols).toBe(1);
  });

  it('renders only the rows in view and a margin, for 20,000 images', () => {
    const g = gridWindow({ width: 590, viewTop: 100_000, viewHeight: 800, total: 20_000 });
    expect(g.cols).toBe(5);
    const firstRow = Math.floor(100_000 / g.rowHeight) - 3;
    expect(g.first).toBe(firstRow * 5);
    expect(g.padTop).toBeCloseTo(firstRow * g.rowHeight);
    expect(g.end - g.first).toBeLessThan(5 * 16);
    expect(g.end).toBeGreaterThan((100_800 / g.rowHeight) * 5);
    expect(g.height).toBeCloseTo(4000 * g.rowHeight - 6);
  });

  it('clamps at both ends', () => {
    const above = gridWindow({ width: 590, viewTop: -2_000, viewHeight: 800, total: 100 });
    expect([above.first, above.end]).toEqual([0, 0]);
    const top = gridWindow({ width: 590, viewTop: -100, viewHeight: 800, total: 100 });
    expect(top.first).toBe(0);
    expect(top.end).toBeGreaterThan(0);
    const below = gridWindow({ width: 590, viewTop: 1e9, viewHeight: 800, total: 100 });
    expect(below.end).toBe(100);
    expect(below.first).toBe(100);
    expect(gridWindow({ width: 590, viewTop: 0, viewHeight: 800, total: 0 })).toMatchObject({ first: 0, end: 0, height: 0 });
  });
});
