import { locale } from 'svelte-i18n';
import { get } from 'svelte/store';

export function formatTime(ms: number | null | undefined): string {
  if (ms == null) return '—';
  const lang = get(locale) ?? 'zh-CN';
  return new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(ms));
}

export function formatDuration(ms: number | null | undefined): string {
  if (ms == null) return '—';
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}
