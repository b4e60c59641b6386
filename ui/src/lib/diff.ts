// What changed between two texts, for the version history and for suggestions (rewrite,
// make compliant): a character diff for Chinese, a word diff for text without CJK, with the
// one- or two-character "same" islands between changes folded into the change so a rewritten
// phrase reads as one deletion and one insertion instead of confetti.
import { diffChars, diffWordsWithSpace } from 'diff';

export interface Piece {
  kind: 'same' | 'add' | 'del';
  text: string;
}

const CJK = /[\u3400-\u9fff\uf900-\ufaff]/;

export function textDiff(before: string, after: string): Piece[] {
  const changes = CJK.test(before + after) ? diffChars(before, after) : diffWordsWithSpace(before, after);
  const out: Piece[] = [];
  let del = '';
  let add = '';
  const flush = () => {
    if (del) out.push({ kind: 'del', text: del });
    if (add) out.push({ kind: 'add', text: add });
    del = add = '';
  };
  changes.forEach((c, i) => {
    if (c.removed) del += c.value;
    else if (c.added) add += c.value;
    else {
      const between = (del || add) && i < changes.length - 1 && [...c.value].length <= 2 && !c.value.includes('\n');
      if (between) {
        del += c.value;
        add += c.value;
      } else {
        flush();
        out.push({ kind: 'same', text: c.value });
      }
    }
  });
  flush();
  return out;
}

/** Characters (code points) added and removed. */
export function diffStats(pieces: Piece[]): { added: number; removed: number } {
  let added = 0;
  let removed = 0;
  for (const p of pieces) {
    if (p.kind === 'add') added += [...p.text].length;
    if (p.kind === 'del') removed += [...p.text].length;
  }
  return { added, removed };
}
