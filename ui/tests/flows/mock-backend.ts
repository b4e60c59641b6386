// An in-memory stand-in for the Rust commands, for browser flow tests of the UI only. The real
// commands are tested through the real capabilities in tests/ipc.rs and end to end in tests/e2e.
import { mockIPC } from '@tauri-apps/api/mocks';
import type { GenerationRecord, JobRecord, Project, Settings } from '../../src/lib/types';

let now = Date.parse('2026-11-20T10:00:00Z');
const tick = () => (now += 60_000);
let projects: Project[] = [];
let seq = 0;
let settings: Settings = {
  language: 'zh-CN', theme: 'light', heavy_job_slots: 1, text_model: null, model_memory_mb: 4096, threads: 0, device: 'auto',
  cache_repacked_models: true, remote_base_url: '', remote_model: '', remote_timeout_s: 120, remote_extra_sampling: true,
  remote_api_key_set: false,
};
const generations: GenerationRecord[] = [];
const jobs: JobRecord[] = [];

function newProject(name: string): Project {
  const trimmed = name.trim();
  if (!trimmed) throw { kind: 'invalid_input', message: 'a project needs a name' };
  if ([...trimmed].length > 100) throw { kind: 'invalid_input', message: `a project name may be at most 100 characters (this one has ${[...trimmed].length})` };
  const p: Project = { id: ++seq, name: trimmed, description: '', created_at: tick(), updated_at: now, trashed_at: null, generation_count: 0, document_count: 0 };
  projects.push(p);
  return p;
}

// Seed: one project with history, one interrupted job.
const seeded = newProject('美妆专场');
const samples: [GenerationRecord['kind'], string, string][] = [
  ['text', '为保湿面霜写一段小红书笔记', '姐妹们！这款面霜真的好用，干皮救星～'],
  ['script', '口红直播话术，开场 30 秒', '家人们看过来，这支口红显白又持久'],
  ['image', 'a lipstick on a marble table, studio light', ''],
];
for (const [kind, prompt, output] of samples) {
  generations.push({
    id: generations.length + 1, project_id: seeded.id, project_name: seeded.name, job_id: null, kind,
    model_id: kind === 'image' ? 'sd15' : 'qwen2.5-coder-0.5b-instruct', prompt,
    params: { temperature: 0.7, top_p: 0.9, max_tokens: 256 }, seed: 42, status: 'succeeded', error_kind: null,
    error_message: null, output_text: output || null, asset: null, prompt_tokens: 40, output_tokens: 120,
    started_at: tick(), finished_at: now + 1500, duration_ms: 1500, rating: 0, starred: false, created_at: now,
  });
}
jobs.push({
  id: 1, kind: 'maintenance', resource: 'light', project_id: null, status: 'interrupted', progress_done: 1,
  progress_total: 2, result: null, error_kind: 'interrupted', error_message: 'Atelier stopped while this job was unfinished',
  retry_of: null, created_at: now, started_at: now, finished_at: now,
});

const live = () => projects.filter((p) => p.trashed_at == null);
const find = (id: unknown) => {
  const p = projects.find((x) => x.id === id);
  if (!p) throw { kind: 'not_found', message: `project ${id} does not exist` };
  return p;
};

type Args = Record<string, any>;
const handlers: Record<string, (a: Args) => unknown> = {
  app_status: () => ({ version: '0.1.0', data_dir: '/home/demo/.local/share/atelier', db_path: '/home/demo/.local/share/atelier/atelier.db', error: null, interrupted_jobs: 1, migration_backup: null }),
  get_settings: () => settings,
  update_settings: (a) => (settings = { ...settings, ...Object.fromEntries(Object.entries(a.patch).filter(([, v]) => v != null)) }),
  list_projects: () => live(),
  list_trash: () => projects.filter((p) => p.trashed_at != null),
  create_project: (a) => newProject(a.name),
  rename_project: (a) => Object.assign(find(a.id), { name: String(a.name).trim(), updated_at: tick() }),
  trash_project: (a) => Object.assign(find(a.id), { trashed_at: tick() }),
  restore_project: (a) => Object.assign(find(a.id), { trashed_at: null }),
  purge_project: (a) => { projects = projects.filter((p) => p.id !== a.id); return 0; },
  search_history: (a) => {
    const q = a.query;
    const words = String(q.text ?? '').split(/\s+/).filter(Boolean);
    const items = generations
      .filter((g) => live().some((p) => p.id === g.project_id))
      .filter((g) => words.every((w) => (g.prompt + (g.output_text ?? '')).toLowerCase().includes(w.toLowerCase())))
      .filter((g) => !q.kind || g.kind === q.kind)
      .filter((g) => !q.starred_only || g.starred)
      .sort((x, y) => y.id - x.id)
      .map((g) => ({ ...g, prompt_preview: g.prompt, output_preview: g.output_text ?? '' }));
    return { items, next_before: null };
  },
  get_generation: (a) => generations.find((g) => g.id === a.id) ?? (() => { throw { kind: 'not_found', message: 'no such generation' }; })(),
  star_generation: (a) => { generations.find((g) => g.id === a.id)!.starred = a.starred; return null; },
  rate_generation: (a) => { generations.find((g) => g.id === a.id)!.rating = a.rating; return null; },
  list_jobs: () => jobs,
  cancel_job: () => false,
  retry_job: (a) => {
    const id = jobs.length + 1;
    jobs.unshift({ ...jobs.find((j) => j.id === a.id)!, id, status: 'succeeded', retry_of: a.id, error_kind: null, error_message: null });
    return id;
  },
  watch_jobs: () => null,
  start_maintenance: () => jobs.length + 1,
};

export function installMockBackend() {
  mockIPC((cmd, args) => {
    const h = handlers[cmd];
    if (!h) throw { kind: 'ipc', message: `command ${cmd} not mocked` };
    return h((args ?? {}) as Args);
  });
}
