// Scrolls the image gallery of the real app from the top to the last of 20,000 images and
// reports the frame times the webview gave while it did: how "scrolling stays smooth" is
// measured. A benchmark, not a test: run it by hand, under a display.
//
//   cargo build --release --features custom-protocol --bin atelier && cargo build --release -p atelier-cli
//   xvfb-run -a -s "-screen 0 1280x900x24" node bench/gallery-scroll.mjs [IMAGES] [PX_PER_FRAME]
//
// The gallery is filled by `atelier-cli bench gallery --into-home` (the real store API), the app
// is driven through tauri-driver + WebKitWebDriver as in tests/e2e/, and the scrolling is done by
// the page itself: every animation frame moves the app's scroll container by PX_PER_FRAME pixels
// (a fast flick; 800 by default) until the end stays put for two seconds.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Builder, By, until } from 'selenium-webdriver';

const images = Number(process.argv[2] ?? 20000);
const step = Number(process.argv[3] ?? 800);
const targetDir = process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/atelier/target');
const application = join(targetDir, 'release/atelier');
const cli = join(targetDir, 'release/atelier-cli');
const home = mkdtempSync(join(tmpdir(), 'atelier-scroll-'));
const port = 5444 + Math.floor(Math.random() * 1000);

const fill = spawnSync(cli, ['--home', home, 'bench', 'gallery', '--images', String(images), '--samples', '1', '--into-home']);
if (fill.status !== 0) throw new Error(String(fill.stderr));
const project = `图库 ${images} 张`;

const driverProc = spawn('tauri-driver', ['--port', String(port), '--native-port', String(port + 1000)], {
  env: { ...process.env, ATELIER_HOME: home, RUST_LOG: 'warn' },
  stdio: ['ignore', 'inherit', 'inherit'],
});
let driver;
try {
  for (let i = 0; i < 100; i++) {
    try {
      await fetch(`http://127.0.0.1:${port}/status`);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  driver = await new Builder()
    .usingServer(`http://127.0.0.1:${port}/`)
    .withCapabilities({ browserName: 'wry', 'tauri:options': { application } })
    .build();
  const switcher = await driver.wait(until.elementLocated(By.css('[data-testid=project-switcher]')), 30_000);
  await driver.wait(until.elementLocated(By.xpath(`//select[@data-testid='project-switcher']/option[text()='${project}']`)), 10_000);
  await switcher.findElement(By.xpath(`./option[text()='${project}']`)).click();
  await driver.findElement(By.css('[data-view=images]')).click();
  await driver.wait(until.elementLocated(By.css('[data-testid=gallery-grid] .tile')), 30_000);
  await driver.manage().setTimeouts({ script: 600_000 });
  const r = await driver.executeAsyncScript(
    `const done = arguments[arguments.length - 1];
    const step = arguments[0];
    const grid = document.querySelector('[data-testid=gallery-grid]');
    let sc = grid.parentElement;
    while (sc && !['auto', 'scroll'].includes(getComputedStyle(sc).overflowY)) sc = sc.parentElement;
    sc = sc || document.scrollingElement;
    const frames = [];
    const seen = new Set();
    let rendered = 0;
    let last = performance.now();
    const t0 = last;
    let stillSince = null;
    let prev = -1;
    function tick(now) {
      // A frame counts while the page is moving (not while it waits at the end).
      if (stillSince === null && prev >= 0) frames.push(now - last);
      last = now;
      for (const t of grid.querySelectorAll('.tile')) seen.add(t.dataset.generation);
      rendered = Math.max(rendered, grid.querySelectorAll('.tile').length);
      sc.scrollTop += step;
      if (sc.scrollTop === prev) stillSince ??= now;
      else stillSince = null;
      prev = sc.scrollTop;
      if ((stillSince !== null && now - stillSince > 2000) || now - t0 > 580000) {
        const ids = [...grid.querySelectorAll('.tile')].map((t) => Number(t.dataset.generation));
        done({ frames, seconds: (now - t0) / 1000, seen: seen.size, rendered, oldest: Math.min(...ids), height: sc.scrollHeight });
        return;
      }
      requestAnimationFrame(tick);
    }
    requestAnimationFrame(tick);`,
    step,
  );
  const moving = r.frames.slice().sort((a, b) => a - b);
  const pct = (p) => moving[Math.min(moving.length - 1, Math.round((moving.length - 1) * p))];
  const result = {
    images,
    px_per_frame: step,
    scrolled_px: r.height,
    seconds: r.seconds,
    frames: moving.length,
    frame_ms_p50: pct(0.5),
    frame_ms_p95: pct(0.95),
    frame_ms_p99: pct(0.99),
    frame_ms_max: moving[moving.length - 1],
    over_50ms: moving.filter((f) => f > 50).length,
    tiles_seen: r.seen,
    most_tiles_in_page: r.rendered,
    oldest_reached: r.oldest,
  };
  console.log(JSON.stringify(result, null, 2));
} finally {
  await driver?.quit();
  driverProc.kill('SIGTERM');
  rmSync(home, { recursive: true, force: true });
}
