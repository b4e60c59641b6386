import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { clearMocks, mockIPC } from '@tauri-apps/api/mocks';
import Projects from './Projects.svelte';
import { app } from '../lib/app.svelte';
import type { Project } from '../lib/types';

let projects: Project[];
let trash: Project[];
let calls: { cmd: string; args: Record<string, unknown> }[];

function project(id: number, name: string): Project {
  return { id, name, description: '', created_at: 0, updated_at: 0, trashed_at: null, generation_count: 0, document_count: 0 };
}

beforeEach(() => {
  projects = [];
  trash = [];
  calls = [];
  mockIPC((cmd, args) => {
    calls.push({ cmd, args: (args ?? {}) as Record<string, unknown> });
    const a = args as Record<string, unknown>;
    switch (cmd) {
      case 'list_projects':
        return projects;
      case 'list_trash':
        return trash;
      case 'create_project': {
        const name = String(a.name).trim();
        if (!name) throw { kind: 'invalid_input', message: 'a project needs a name' };
        const p = project(projects.length + 1, name);
        projects = [p, ...projects];
        return p;
      }
      case 'trash_project': {
        const p = projects.find((x) => x.id === a.id)!;
        projects = projects.filter((x) => x.id !== a.id);
        trash = [{ ...p, trashed_at: Date.now() }];
        return p;
      }
      default:
        throw { kind: 'ipc', message: `unexpected ${cmd}` };
    }
  });
  app.projects = [];
  app.currentProjectId = null;
  app.toasts = [];
});

afterEach(() => {
  cleanup();
  clearMocks();
});

describe('Projects', () => {
  it('an Enter that confirms an IME candidate does not create a project', async () => {
    render(Projects);
    const input = screen.getByTestId('new-project-name') as HTMLInputElement;
    await fireEvent.input(input, { target: { value: '双十一' } });
    await fireEvent.keyDown(input, { key: 'Enter', isComposing: true });
    await fireEvent.keyDown(input, { key: 'Enter', keyCode: 229 });
    expect(calls.filter((c) => c.cmd === 'create_project')).toHaveLength(0);

    await fireEvent.keyDown(input, { key: 'Enter' });
    await waitFor(() => expect(calls.filter((c) => c.cmd === 'create_project')).toHaveLength(1));
    expect(calls.find((c) => c.cmd === 'create_project')!.args.name).toBe('双十一');
    await waitFor(() => expect(screen.getByText('双十一')).toBeTruthy());
    expect(app.currentProjectId).toBe(1);
    expect(input.value).toBe('');
  });

  it('shows the backend message when the name is refused, and keeps the typed text', async () => {
    render(Projects);
    const input = screen.getByTestId('new-project-name') as HTMLInputElement;
    await fireEvent.input(input, { target: { value: '   ' } });
    await fireEvent.click(screen.getByTestId('create-project'));
    await waitFor(() => expect(app.toasts.some((t) => t.error && t.text === '输入有误：a project needs a name')).toBe(true));
    expect(input.value).toBe('   ');
  });

  it('counts characters (not bytes) against the 100 limit', async () => {
    render(Projects);
    const input = screen.getByTestId('new-project-name');
    await fireEvent.input(input, { target: { value: '名'.repeat(101) } });
    const counter = screen.getByText('101/100');
    expect(counter.classList.contains('over')).toBe(true);
  });

  it('delete asks first, then moves the project to the trash', async () => {
    projects = [project(7, '旧项目')];
    app.projects = projects;
    render(Projects);
    await fireEvent.click(screen.getByText('删除'));
    expect(calls.some((c) => c.cmd === 'trash_project')).toBe(false);
    expect(screen.getByText('将项目“旧项目”移入回收站？')).toBeTruthy();
    await fireEvent.click(screen.getByTestId('confirm'));
    await waitFor(() => expect(calls.some((c) => c.cmd === 'trash_project' && c.args.id === 7)).toBe(true));
    await waitFor(() => expect(screen.getByTestId('trash-list').textContent).toContain('旧项目'));
  });
});
