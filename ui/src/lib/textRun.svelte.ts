// One text generation as the UI sees it: the streamed text, whether it runs, how it ended.
// Shared by every studio (the Models screen's try-out, later the writing and script studios).
import { api, toApiError } from './api';
import type { JobEvent, SamplingParams, TextRequest, TextResult } from './types';

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 0.7,
  top_p: 0.9,
  top_k: 40,
  min_p: 0.05,
  repeat_penalty: 1.1,
  repeat_last_n: 64,
  max_tokens: 512,
  stop: [],
  seed: null,
};

export class TextRun {
  text = $state('');
  running = $state(false);
  /** Loading progress (tensors repacked) while the model loads; null otherwise. */
  loading = $state<{ done: number; total: number } | null>(null);
  result = $state<TextResult | null>(null);
  error = $state<{ kind: string; message: string } | null>(null);
  cancelled = $state(false);
  jobId = $state<number | null>(null);

  /** Clears the last run and marks this one running. */
  begin() {
    this.text = '';
    this.result = null;
    this.error = null;
    this.cancelled = false;
    this.loading = null;
    this.running = true;
  }

  async start(projectId: number, request: TextRequest) {
    this.begin();
    try {
      this.jobId = await api.generateText(projectId, request, (e) => this.handle(e));
    } catch (e) {
      const err = toApiError(e);
      this.error = { kind: err.kind, message: err.message };
      this.running = false;
    }
  }

  async stop() {
    if (this.jobId !== null && this.running) await api.cancelJob(this.jobId);
  }

  /** Applies one job event (also used by multi-variant runs). */
  handle(e: JobEvent) {
    switch (e.type) {
      case 'Progress':
        this.loading = { done: e.done, total: e.total };
        break;
      case 'Token':
        this.loading = null;
        // Plain text: shown through text nodes only, never as HTML.
        this.text += e.text;
        break;
      case 'Finished':
        this.result = e.result as TextResult;
        this.running = false;
        this.loading = null;
        break;
      case 'Failed':
        this.error = { kind: e.kind, message: e.message };
        this.running = false;
        this.loading = null;
        break;
      case 'Cancelled':
        this.cancelled = true;
        this.running = false;
        this.loading = null;
        break;
    }
  }
}
