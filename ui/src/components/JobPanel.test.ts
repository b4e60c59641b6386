import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { clearMocks, mockIPC } from '@tauri-apps/api/mocks';
import JobPanel from './JobPanel.svelte';
import { app } from '../lib/app.svelte';
import type { JobRecord } from '../lib/types';

function job(id: number, status: JobRecord['status'], extra: Partial<JobRecord> = {}): JobRecord {
  return {
    id, kind: 'maintenance', resource: 'light', project_id: null, status, progress_done: 0, progress_total: 0,
    result: null, error_kind: null, error_message: null, retry_of: null, created_at: 0, started_at: null, finished_at: null,
    ...extra,
  };
}

afterEach(() => {
  cleanup();
  clearMocks();
});

describe('JobPanel', () => {
  it('offers cancel for running jobs and retry for interrupted ones', async () => {
    const calls: string[] = [];
    mockIPC((cmd, args) => {
      calls.push(`${cmd}:${(args as { id?: number }).id ?? ''}`);
      if (cmd === 'list_jobs') return app.jobs;
      return cmd === 'retry_job' ? 3 : true;
    });
    app.jobs = [
      job(1, 'running', { progress_done: 1, progress_total: 4 }),
      job(2, 'interrupted', { error_message: 'Atelier stopped while this job was unfinished' }),
    ];
    render(JobPanel);
    expect(screen.getByText('运行中')).toBeTruthy();
    expect(screen.getByText('已中断')).toBeTruthy();
    expect(screen.getByText('Atelier stopped while this job was unfinished')).toBeTruthy();
    expect((document.querySelector('progress') as HTMLProgressElement).value).toBe(1);

    await fireEvent.click(screen.getByText('取消'));
    await fireEvent.click(screen.getByText('重试'));
    await waitFor(() => expect(calls).toContain('retry_job:2'));
    expect(calls).toContain('cancel_job:1');
  });
});
