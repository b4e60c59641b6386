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

/** 98362432 → "98.4 MB" (decimal units, as file managers show). */
export function formatBytes(n: number | null | undefined): string {
  if (n == null) return '–';
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}
