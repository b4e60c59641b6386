import { mount } from 'svelte';
import './app.css';
import { setupI18n, setLanguage } from './lib/i18n';
import { api } from './lib/api';
import Teleprompter from './views/Teleprompter.svelte';

setupI18n('zh-CN');
api
  .getSettings()
  .then((s) => setLanguage(s.language === 'en' ? 'en' : 'zh-CN'))
  .catch(() => {});
mount(Teleprompter, { target: document.getElementById('app')! });
