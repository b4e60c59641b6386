// The gallery grid's window: which tiles are on screen (plus a margin), so a gallery of 20,000
// images keeps a few hundred tiles in the page instead of all of them. Pure arithmetic, so
// the layout rules are tested without a browser.

export interface GridLayout {
  /** Tiles per row. */
  cols: number;
  /** A tile's side in px. */
  tile: number;
  /** Tile plus gap. */
  rowHeight: number;
  /** Index of the first tile rendered, and one past the last. */
  first: number;
  end: number;
  /** Space above the first rendered row, and the height of the whole grid. */
  padTop: number;
  height: number;
}

export interface GridInput {
  /** The grid's width in px. */
  width: number;
  /** Where the viewport's top is, in px from the grid's top (negative: the grid starts lower). */
  viewTop: number;
  viewHeight: number;
  total: number;
  minTile?: number;
  gap?: number;
  /** Rows rendered beyond the viewport on each side. */
  overscan?: number;
}

/** Columns as CSS `repeat(auto-fill, minmax(minTile, 1fr))` lays them out, and the rows in view. */
export function gridWindow({ width, viewTop, viewHeight, total, minTile = 112, gap = 6, overscan = 3 }: GridInput): GridLayout {
  const cols = Math.max(1, Math.floor((Math.max(width, 0) + gap) / (minTile + gap)));
  const tile = Math.max(1, (Math.max(width, minTile) - (cols - 1) * gap) / cols);
  const rowHeight = tile + gap;
  const rows = Math.ceil(total / cols);
  const height = rows === 0 ? 0 : rows * rowHeight - gap;
  const firstRow = Math.min(rows, Math.max(0, Math.floor(viewTop / rowHeight) - overscan));
  const endRow = Math.min(rows, Math.max(firstRow, Math.ceil((viewTop + viewHeight) / rowHeight) + overscan));
  return {
    cols,
    tile,
    rowHeight,
    first: firstRow * cols,
    end: Math.min(total, endRow * cols),
    padTop: firstRow * rowHeight,
    height,
  };
}
