import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { resolve } from 'node:path';

const here = import.meta.dirname;

// `--mode flows` builds the browser flow-test bundle: the same app with an in-page mock of the
// Tauri IPC (tests/flows/mock-backend.ts), into dist-flows/.
export default defineConfig(({ mode }) => ({
  plugins: [svelte()],
  clearScreen: false,
  server: { port: 1420, strictPort: true },
  build: {
    outDir: mode === 'flows' ? 'dist-flows' : 'dist',
    target: 'safari15',
    rollupOptions: {
      input: mode === 'flows' ? resolve(here, 'flows.html') : { main: resolve(here, 'index.html'), teleprompter: resolve(here, 'teleprompter.html') },
    },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.ts'],
    setupFiles: ['src/test-setup.ts'],
  },
  resolve: process.env.VITEST ? { conditions: ['browser'] } : undefined,
}));
