// 1–4 variants of a template's copy, generated side by side: one TextRun per variant, fed by
// the single channel of `generate_copy` (events tagged with the variant index).
import { api, toApiError } from './api';
import { TextRun } from './textRun.svelte';
import type { CopyRequest } from './types';

export class CopyRun {
  variants = $state<TextRun[]>([]);
  error = $state<{ kind: string; message: string } | null>(null);
  private jobIds: number[] = [];

  get running(): boolean {
    return this.variants.some((v) => v.running);
  }

  async start(request: CopyRequest) {
    this.error = null;
    this.variants = Array.from({ length: request.variants }, () => {
      const r = new TextRun();
      r.begin();
      return r;
    });
    try {
      this.jobIds = await api.generateCopy(request, (e) => this.variants[e.variant]?.handle(e.event));
      this.jobIds.forEach((id, i) => {
        if (this.variants[i]) this.variants[i].jobId = id;
      });
    } catch (e) {
      const err = toApiError(e);
      this.error = { kind: err.kind, message: err.message };
      for (const v of this.variants) v.running = false;
    }
  }

  async stop() {
    for (const v of this.variants) if (v.running && v.jobId !== null) await api.cancelJob(v.jobId);
  }
}
