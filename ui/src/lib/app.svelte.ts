// App-wide state: start-up status, projects and the current project, settings, jobs, toasts.
import { api, ApiError, toApiError } from './api';
import { setLanguage } from './i18n';
import { _ } from 'svelte-i18n';
import { get } from 'svelte/store';
import type { AppStatus, JobRecord, JobUpdate, Project, Settings, SettingsPatch, Theme } from './types';

export type View = 'projects' | 'writing' | 'images' | 'scripts' | 'history' | 'models' | 'settings';

export interface Toast {
  id: number;
  text: string;
  error: boolean;
}

const CURRENT_PROJECT_KEY = 'atelier.currentProject';

class AppModel {
  status = $state<AppStatus | null>(null);
  view = $state<View>('projects');
  projects = $state<Project[]>([]);
  currentProjectId = $state<number | null>(null);
  settings = $state<Settings>({
    language: 'zh-CN', theme: 'light', heavy_job_slots: 1, text_model: null, model_memory_mb: 4096, threads: 0,
    device: 'auto', cache_repacked_models: true, remote_base_url: '', remote_model: '', remote_timeout_s: 120,
    remote_extra_sampling: true, remote_api_key_set: false,
  });
  jobs = $state<JobRecord[]>([]);
  toasts = $state<Toast[]>([]);
  private toastSeq = 0;

  get currentProject(): Project | null {
    return this.projects.find((p) => p.id === this.currentProjectId) ?? null;
  }

  get ready(): boolean {
    return !!this.status && !this.status.error;
  }

  async start() {
    this.status = await api.appStatus();
    if (this.status.error) return;
    await this.afterOpen();
  }

  async afterOpen() {
    this.settings = await api.getSettings();
    this.applySettings(this.settings);
    await this.refreshProjects();
    const saved = Number(localStorage.getItem(CURRENT_PROJECT_KEY));
    if (saved && this.projects.some((p) => p.id === saved)) this.currentProjectId = saved;
    else this.currentProjectId = this.projects[0]?.id ?? null;
    await this.refreshJobs();
    await api.watchJobs((u) => this.onJobUpdate(u));
  }

  async retryOpen() {
    this.status = await api.retryOpen();
    if (!this.status.error) await this.afterOpen();
  }

  applySettings(s: Settings) {
    setLanguage(s.language);
    applyTheme(s.theme);
  }

  async updateSettings(patch: SettingsPatch) {
    this.settings = await api.updateSettings(patch);
    this.applySettings(this.settings);
  }

  selectProject(id: number | null) {
    this.currentProjectId = id;
    if (id == null) localStorage.removeItem(CURRENT_PROJECT_KEY);
    else localStorage.setItem(CURRENT_PROJECT_KEY, String(id));
  }

  async refreshProjects() {
    this.projects = await api.listProjects();
    if (this.currentProjectId != null && !this.projects.some((p) => p.id === this.currentProjectId)) {
      this.selectProject(this.projects[0]?.id ?? null);
    }
  }

  async refreshJobs() {
    this.jobs = await api.listJobs();
  }

  private onJobUpdate(u: JobUpdate) {
    const job = this.jobs.find((j) => j.id === u.job_id);
    if (!job || u.event.type === 'Queued') {
      // A job we have not seen yet: re-read the table (cheap, and keeps the order right).
      void this.refreshJobs();
      return;
    }
    switch (u.event.type) {
      case 'Started':
        job.status = 'running';
        break;
      case 'Progress':
        job.progress_done = u.event.done;
        job.progress_total = u.event.total;
        break;
      case 'Finished':
        job.status = 'succeeded';
        job.result = u.event.result;
        break;
      case 'Failed':
        job.status = 'failed';
        job.error_kind = u.event.kind;
        job.error_message = u.event.message;
        break;
      case 'Cancelled':
        job.status = 'cancelled';
        break;
    }
  }

  toast(text: string, error = false) {
    const id = ++this.toastSeq;
    this.toasts.push({ id, text, error });
    setTimeout(() => this.dismiss(id), error ? 8000 : 3500);
  }

  dismiss(id: number) {
    this.toasts = this.toasts.filter((t) => t.id !== id);
  }

  /** Runs `f`; an error becomes a red toast with the backend's message. */
  async attempt<T>(f: () => Promise<T>): Promise<T | undefined> {
    try {
      return await f();
    } catch (e) {
      const err: ApiError = toApiError(e);
      // A localised title for the kind, then the engine's own detail.
      const title = get(_)(`errors.${err.kind}`, { default: '' });
      this.toast(title ? `${title}：${err.message}` : err.message, true);
      return undefined;
    }
  }
}

export function applyTheme(theme: Theme) {
  const dark =
    theme === 'dark' ||
    (theme === 'system' && typeof matchMedia === 'function' && matchMedia('(prefers-color-scheme: dark)').matches);
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
}

export const app = new AppModel();
