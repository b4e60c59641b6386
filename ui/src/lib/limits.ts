// The platform limits a template declares, measured on the editor's text: characters (code
// points, as platforms count them), the title (the first non-empty line) and hashtags.

/** `#话题` tags, counted once each (Xiaohongshu and Douyin style, also `#tag#` Weibo style). */
export function hashtags(text: string): number {
  const tags = text.match(/#[^\s#]+#?/gu) ?? [];
  return new Set(tags.map((t) => t.replace(/#$/, ''))).size;
}

/** Characters of the first non-empty line (the title in note-style copy). */
export function titleChars(text: string): number {
  const first = text.split('\n').find((l) => l.trim() !== '') ?? '';
  return [...first.trim()].length;
}
