import { addMessages, init, locale } from 'svelte-i18n';
import zh from './zh-CN.json';
import en from './en.json';

export const LANGUAGES = ['zh-CN', 'en'] as const;
export type Language = (typeof LANGUAGES)[number];

addMessages('zh-CN', zh);
addMessages('en', en);

/** zh-CN first: it is the default and the fallback for any missing English string. */
export function setupI18n(initial: Language = 'zh-CN') {
  init({ fallbackLocale: 'zh-CN', initialLocale: initial });
}

export function setLanguage(lang: Language) {
  locale.set(lang);
  document.documentElement.lang = lang;
}
