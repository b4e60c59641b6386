// End to end: the release binary (UI embedded, custom protocol) in a real WebKitGTK window,
// driven through tauri-driver + WebKitWebDriver. Run under Xvfb (scripts/test.sh does).
//
// A fresh ATELIER_HOME: create a project, see it in the list, quit, start again, see it still
// there; screenshots under target/e2e/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, existsSync, rmSync, copyFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:http';
import { deflateSync } from 'node:zlib';
import { Builder, By, Key, until } from 'selenium-webdriver';

const root = join(import.meta.dirname, '../..');
const targetDir = process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/atelier/target');
const application = process.env.ATELIER_E2E_APP ?? join(targetDir, 'release/atelier');
const shots = join(root, 'target/e2e');
const port = 4444 + Math.floor(Math.random() * 1000);
const home = mkdtempSync(join(tmpdir(), 'atelier-e2e-'));
let driverProc;

before(async () => {
  assert.ok(existsSync(application), `build the app first: ${application}`);
  assert.ok(process.env.DISPLAY, 'run under a display (xvfb-run -a node --test tests/e2e/)');
  mkdirSync(shots, { recursive: true });
  driverProc = spawn('tauri-driver', ['--port', String(port), '--native-port', String(port + 1000)], {
    env: { ...process.env, ATELIER_HOME: home, RUST_LOG: 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  // Wait until it accepts connections.
  for (let i = 0; i < 100; i++) {
    try {
      await fetch(`http://127.0.0.1:${port}/status`);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error('tauri-driver did not start');
});

after(() => {
  // SIGTERM, never SIGKILL: tauri-driver then stops WebKitWebDriver too.
  driverProc?.kill('SIGTERM');
  rmSync(home, { recursive: true, force: true });
});

const capabilities = { browserName: 'wry', 'tauri:options': { application } };

async function session() {
  const driver = await new Builder().usingServer(`http://127.0.0.1:${port}/`).withCapabilities(capabilities).build();
  return driver;
}

// Writes a random-weight image model of `arch` (diffusers layout) to <home>/incoming/<name>
// with the CLI the tests just built; returns its folder.
function randomImageModel(arch, name) {
  const cli = [join(targetDir, 'debug/atelier-cli'), join(targetDir, 'release/atelier-cli')].find(existsSync);
  assert.ok(cli, 'build atelier-cli first (cargo test --workspace builds it)');
  const src = join(home, 'incoming', name);
  const made = spawnSync(cli, ['image', 'random-model', '--arch', arch, src], { env: { ...process.env, ATELIER_HOME: home } });
  assert.equal(made.status, 0, String(made.stderr));
  return src;
}

// How many elements match `css`. WebKitWebDriver can report an element going stale while it
// finds it (a dialog or a list re-rendering): such a poll counts as "not yet" (-1), and the
// wait polls again.
async function countOf(driver, css) {
  try {
    return (await driver.findElements(By.css(css))).length;
  } catch (e) {
    if (e.name === 'StaleElementReferenceError') return -1;
    throw e;
  }
}

async function startApp() {
  const driver = await session();
  await driver.wait(until.elementLocated(By.css('[data-testid=project-list]')), 30_000);
  return driver;
}

// Clicks `el` once nothing covers it. WebDriver scrolls an element only to the edge of the view,
// where the fixed job panel or a passing toast can sit over it; centring it first and retrying
// while the click is intercepted makes the click what a user would do, not a race.
async function clickFree(driver, el) {
  await driver.wait(async () => {
    try {
      await driver.executeScript('arguments[0].scrollIntoView({block: "center"})', el);
      await el.click();
      return true;
    } catch (e) {
      if (e.name === 'ElementClickInterceptedError') return false;
      throw e;
    }
  }, 10_000);
}

// WebKitWebDriver's screenshot waits for the page's next rendering update, and an idle page
// has none: the command then never returns. A 1-pixel element that changes colour every frame
// while the shot is taken keeps updates coming; it is removed afterwards.
async function shot(driver, name) {
  await driver.executeScript(`
    const e = document.createElement('div');
    e.id = '__e2e_tick';
    e.style.cssText = 'position:fixed;right:0;bottom:0;width:1px;height:1px;pointer-events:none';
    document.body.append(e);
    let i = 0;
    (function tick() { e.style.background = i++ % 2 ? '#ffffff' : '#fefefe'; window.__e2eTick = requestAnimationFrame(tick); })();`);
  try {
    writeFileSync(join(shots, name), await driver.takeScreenshot(), 'base64');
  } finally {
    await driver.executeScript(`cancelAnimationFrame(window.__e2eTick); document.getElementById('__e2e_tick')?.remove();`);
  }
}

test('a project created in the real app is still there after a restart', async () => {
  let driver = await startApp();
  try {
    const status = await driver.executeScript('return document.documentElement.lang');
    assert.equal(status, 'zh-CN', 'zh-CN is the default language');
    const input = await driver.findElement(By.css('[data-testid=new-project-name]'));
    await input.sendKeys('端到端测试项目');
    await driver.findElement(By.css('[data-testid=create-project]')).click();
    await driver.wait(until.elementLocated(By.xpath("//ul[@data-testid='project-list']//strong[text()='端到端测试项目']")), 10_000);
    const selected = await driver.executeScript(
      "const s = document.querySelector('[data-testid=project-switcher]'); return s.options[s.selectedIndex].text",
    );
    assert.equal(selected, '端到端测试项目');
    await shot(driver, '01-created.png');
  } finally {
    await driver.quit();
  }

  driver = await startApp();
  try {
    await driver.wait(until.elementLocated(By.xpath("//ul[@data-testid='project-list']//strong[text()='端到端测试项目']")), 10_000);
    // The data folder in Settings is the one this run chose.
    await driver.findElement(By.css('[data-view=settings]')).click();
    const dir = await driver.wait(until.elementLocated(By.css('[data-testid=data-dir]')), 5_000);
    assert.equal(await dir.getText(), home);
    await driver.findElement(By.css('[data-testid=run-maintenance]')).click();
    const result = await driver.wait(until.elementLocated(By.css('[data-testid=maintenance-result]')), 15_000);
    assert.match(await result.getText(), /数据库完好/);
    await shot(driver, '02-settings-after-restart.png');
    await driver.findElement(By.css('[data-view=projects]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=project-list] li')), 5_000);
    await shot(driver, '03-projects-after-restart.png');
  } finally {
    await driver.quit();
  }
});

test('a real model writes in the Models screen, streams, stops, and lands in History', async () => {
  const modelCache = process.env.ATELIER_MODEL_CACHE ?? join(process.env.HOME, '.cache/atelier/models');
  mkdirSync(join(home, 'models'), { recursive: true });
  copyFileSync(join(modelCache, 'smollm2-135m-instruct.gguf'), join(home, 'models', 'smollm2-135m-instruct.gguf'));
  const driver = await startApp();
  try {
    await driver.findElement(By.css('[data-view=models]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=model-table]')), 10_000);
    const table = await driver.findElement(By.css('[data-testid=model-table]')).getText();
    assert.match(table, /smollm2-135m-instruct/);
    assert.match(table, /Q4_1/);
    const prompt = await driver.findElement(By.css('[data-testid=try-prompt]'));
    await prompt.sendKeys('Write a one-line slogan for a tea shop.');
    await driver.findElement(By.css('[data-testid=generate]')).click();
    const stats = await driver.wait(until.elementLocated(By.css('[data-testid=run-stats]')), 120_000);
    assert.match(await stats.getText(), /tok|token/);
    const text = await driver.findElement(By.css('[data-testid=run-text]')).getText();
    assert.ok(text.trim().length > 0, 'the model wrote something');
    await shot(driver, '04-models-generated.png');

    // A long run, stopped mid-stream: the text so far stays.
    await prompt.clear();
    await prompt.sendKeys('Write a long story about a dragon who runs a bakery.');
    const maxTokens = await driver.findElement(By.css('[data-testid=max-tokens]'));
    await maxTokens.clear();
    await maxTokens.sendKeys('2000');
    await driver.findElement(By.css('[data-testid=generate]')).click();
    await driver.wait(async () => (await driver.findElement(By.css('[data-testid=run-text]')).getText()).length > 20, 60_000);
    await driver.findElement(By.css('[data-testid=stop]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=run-cancelled]')), 15_000);

    await driver.findElement(By.css('[data-view=history]')).click();
    await driver.wait(until.elementLocated(By.xpath("//*[contains(text(), 'slogan for a tea shop')]")), 10_000);
    await shot(driver, '05-history-with-generations.png');
  } finally {
    await driver.quit();
  }
});

test('writing: a template drafts copy with the real model, risky words are flagged and fixed, the export carries both labels', async () => {
  // The model was installed into this home by the previous test.
  const driver = await startApp();
  try {
    await driver.findElement(By.css('[data-view=writing]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=template-picker] option[value=slogan]')), 15_000);
    await driver.executeScript(`const s = document.querySelector('[data-testid=template-picker]'); s.value = 'slogan'; s.dispatchEvent(new Event('change', { bubbles: true }));`);
    const product = await driver.wait(until.elementLocated(By.css('[data-testid=input-product]')), 5_000);
    await product.sendKeys('保温杯');
    await driver.executeScript(`const s = document.querySelector('[data-testid=variants]'); s.value = '1'; s.dispatchEvent(new Event('change', { bubbles: true }));`);
    // The project's brand voice is saved with the project (and goes into its prompts).
    await driver.findElement(By.css('[data-testid=brand-voice] summary')).click();
    await driver.findElement(By.css('[data-testid=voice-must_mention]')).sendKeys('真空双层');
    await driver.findElement(By.css('[data-testid=save-voice]')).click();
    await driver.wait(until.elementLocated(By.xpath("//*[@role='status' and contains(., '已保存')]")), 10_000);
    const maxTokens = await driver.findElement(By.css('[data-testid=max-tokens]'));
    await maxTokens.clear();
    await maxTokens.sendKeys('24');
    await driver.findElement(By.css('[data-testid=generate-copy]')).click();
    try {
      await driver.wait(until.elementLocated(By.css('[data-testid=use-variant]')), 120_000);
    } finally {
      await shot(driver, '06-writing-variants.png');
    }
    const drafted = await driver.findElement(By.css('[data-testid=variant-text]')).getText();
    assert.ok(drafted.trim().length > 0, 'the model wrote a variant');
    // Rated through the real command: pressed only once it is stored.
    await driver.findElement(By.css('[data-testid=rate-up]')).click();
    await driver.wait(async () => (await driver.findElement(By.css('[data-testid=rate-up]')).getAttribute('aria-pressed')) === 'true', 5_000);
    await driver.findElement(By.css('[data-testid=use-variant]')).click();

    // Known risky copy (typed, as a user would paste it): checked as it is typed, the risky
    // spans underlined in the editor, reasons listed, fixed in one click.
    const editor = await driver.findElement(By.css('[data-testid=editor]'));
    await editor.clear();
    const risky = '这是全网最低价的保温杯，销量第一！';
    await editor.sendKeys(risky);
    await driver.wait(async () => (await driver.findElements(By.css('[data-testid=finding]'))).length >= 2, 10_000);
    const findings = await driver.findElement(By.css('[data-testid=findings]')).getText();
    assert.match(findings, /全网最低价/);
    assert.match(findings, /销量第一/);
    const marks = await driver.findElements(By.css('[data-testid=risk-mark]'));
    const marked = await Promise.all(marks.map((m) => m.getAttribute('textContent')));
    assert.ok(marked.includes('全网最低价') && marked.includes('销量第一'), `underlined: ${marked}`);
    // The mark lies exactly under the words in the textarea (same layout in the mirror).
    const [markBox, areaBox] = await driver.executeScript('return [arguments[0].getBoundingClientRect().toJSON(), arguments[1].getBoundingClientRect().toJSON()]', marks[0], editor);
    assert.ok(markBox.y > areaBox.y && markBox.y < areaBox.y + 40, `mark at ${JSON.stringify(markBox)} editor at ${JSON.stringify(areaBox)}`);
    // Picking a finding selects its words; the card under the editor gives the reason and fixes.
    await driver.findElement(By.css('[data-testid=finding] button.link')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=caret-finding]')), 5_000);
    await shot(driver, '07-writing-underlined.png');

    // "Make compliant": the model's rewrite is a suggestion shown as a diff; rejecting it leaves
    // the text alone.
    await editor.click();
    await driver.executeScript('arguments[0].setSelectionRange(0, 0)', editor);
    await driver.findElement(By.css('[data-testid=make-compliant]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=reject-fix]')), 120_000);
    assert.ok((await driver.findElement(By.css('[data-testid=fix-suggestion] [data-testid=diff]')).getText()).trim().length > 0, 'the model suggested a rewrite');
    await driver.findElement(By.css('[data-testid=reject-fix]')).click();
    assert.equal(await editor.getAttribute('value'), risky);

    // A selection action works on the selection only: "polish" on the first clause, accepted,
    // replaces that clause and keeps the rest.
    const clause = '这是全网最低价的保温杯';
    await driver.executeScript('arguments[0].focus(); arguments[0].setSelectionRange(0, arguments[1]); arguments[0].dispatchEvent(new Event("select"))', editor, clause.length);
    await driver.wait(async () => /11/.test(await driver.findElement(By.css('[data-testid=selection-actions]')).getText()), 5_000);
    await driver.findElement(By.css('[data-testid=action-polish]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=accept-fix]')), 120_000);
    const acceptable = await driver.findElement(By.css('[data-testid=accept-fix]')).isEnabled();
    if (acceptable) {
      await driver.findElement(By.css('[data-testid=accept-fix]')).click();
      const polished = await editor.getAttribute('value');
      assert.ok(polished.endsWith('，销量第一！'), `the rest is kept: ${polished}`);
      // Back to the known text for the one-click fix below.
      await editor.clear();
      await editor.sendKeys(risky);
      await driver.wait(async () => (await driver.findElements(By.css('[data-testid=finding]'))).length >= 2, 10_000);
    } else {
      await driver.findElement(By.css('[data-testid=reject-fix]')).click();
    }

    const chips = await driver.findElements(By.xpath("//button[@data-testid='apply-suggestion' and text()='热销款']"));
    assert.ok(chips.length > 0, 'a safer phrasing is offered');
    await chips[0].click();
    await driver.wait(async () => (await editor.getAttribute('value')).includes('热销款'), 5_000);
    assert.ok(!(await editor.getAttribute('value')).includes('销量第一'));
    // Taking the variant saved version 1; saving now adds version 2, compared with version 1.
    await driver.findElement(By.css('[data-testid=save-version]')).click();
    await driver.wait(async () => /（2）/.test(await driver.findElement(By.css('[data-testid=versions] summary')).getText()), 10_000);
    await driver.findElement(By.css('[data-testid=versions] summary')).click();
    const compare = await driver.findElements(By.css('[data-testid=compare-version]'));
    await compare[compare.length - 1].click();
    const diff = await driver.wait(until.elementLocated(By.css('[data-testid=versions] [data-testid=diff] ins')), 5_000);
    assert.match(await diff.getText(), /热销款/);
    // The document is starred and listed first with its star.
    await driver.findElement(By.css('[data-testid=star-document]')).click();
    await driver.wait(async () => (await driver.findElement(By.css('[data-testid=star-document]')).getAttribute('aria-pressed')) === 'true', 5_000);
    assert.match(await driver.findElement(By.css('[data-testid=documents] option:nth-child(2)')).getText(), /^★ /);
    await shot(driver, '08-writing-versions.png');

    // Copy with the label: pasted back (Ctrl+V through the real clipboard) it carries the notice.
    await driver.findElement(By.css('[data-testid=copy-labelled]')).click();
    await driver.wait(until.elementLocated(By.xpath("//*[@role='status' and contains(., '剪贴板')]")), 10_000);
    const pasteBox = await driver.findElement(By.css('[data-testid=voice-examples]'));
    await pasteBox.clear();
    await pasteBox.sendKeys(Key.CONTROL, 'v');
    await driver.wait(async () => (await pasteBox.getAttribute('value')).includes('热销款'), 5_000);
    assert.match(await pasteBox.getAttribute('value'), /本内容由人工智能生成/);
    await pasteBox.clear();

    // A template is duplicated into the user's own, edited, saved and selected.
    await driver.findElement(By.css('[data-testid=duplicate-template]')).click();
    const toml = await driver.wait(until.elementLocated(By.css('[data-testid=template-text]')), 5_000);
    assert.match(await toml.getAttribute('value'), /id = "slogan-copy"/);
    await driver.findElement(By.css('[data-testid=template-preview-button]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=template-preview]')), 5_000);
    await driver.findElement(By.css('[data-testid=template-save]')).click();
    await driver.wait(async () => (await driver.findElement(By.css('[data-testid=template-picker]')).getAttribute('value')) === 'slogan-copy', 10_000);
    await driver.findElement(By.css('[data-testid=edit-template]')).isDisplayed();

    await driver.findElement(By.css('[data-testid=export-md]')).click();
    const toast = await driver.wait(until.elementLocated(By.xpath("//*[@role='status' and contains(., '.md')]")), 10_000);
    const path = (await toast.getText()).match(/(\/.+\.md)/)[1];
    const md = readFileSync(path, 'utf8');
    assert.match(md, /^---\nAIGC: \{"Label":"1","ContentProducer":"Atelier","ProduceID":"[0-9a-f-]{36}"/);
    assert.match(md, /本内容由人工智能生成，发布前请人工审核/);
    assert.match(md, /热销款/);
    // The variant's prompt (in History) carried the brand voice.
    await driver.findElement(By.css('[data-view=history]')).click();
    await driver.wait(until.elementLocated(By.xpath("//*[contains(text(), '真空双层')]")), 10_000);
    await shot(driver, '09-writing-exported.png');
  } finally {
    await driver.quit();
  }
});

test('live scripts: products from a CSV, a script written by hand and checked, an SRT export, the teleprompter driven by keys', async () => {
  const driver = await startApp();
  const csv = join(home, 'products.csv');
  writeFileSync(
    csv,
    '\ufeffname,category,selling_points,daily_price,live_price,price_basis,stock,link_no,mechanism\n' +
      '"真空保温杯, 500ml",food,316 内胆>不挂味|真空层>保温久,199,129,前 30 日最低成交价,500,3,送杯套|满 200 减 20 券\n' +
      '没有卖点的商品,,,,,,,,\n',
  );
  try {
    await driver.findElement(By.css('[data-view=scripts]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=product-form]')), 10_000);
    await driver.findElement(By.css('[data-testid=csv-input]')).sendKeys(csv);
    const report = await driver.wait(until.elementLocated(By.css('[data-testid=import-report]')), 15_000);
    await driver.wait(async () => /已导入 1/.test(await report.getText()), 10_000);
    assert.match(await report.getText(), /第 3 行/);
    await driver.findElement(By.xpath("//ul[@data-testid='product-list']//button[contains(., '真空保温杯')]")).click();
    await driver.wait(async () => (await driver.findElement(By.css('[data-testid=pf-name]')).getAttribute('value')) === '真空保温杯, 500ml', 5_000);
    await driver.findElement(By.css('[data-testid=show-virtual]')).click();
    await driver.findElement(By.css('[data-testid=blank-script]')).click();
    await driver.wait(async () => (await driver.findElements(By.css('[data-testid=segment]'))).length === 7, 10_000);

    // Lines typed into the first two segments, saved: timed, risky words and invented numbers marked.
    const segments = await driver.findElements(By.css('[data-testid=segment]'));
    for (const [i, text] of [[0, '家人们，全网最低价，今天只要 99 元！'], [1, '冬天手冷的扣 1，3 号链接马上上车。']]) {
      await segments[i].findElement(By.xpath(".//button[contains(., '+ 主播')]")).click();
      const area = await segments[i].findElement(By.css('[data-testid=host-line]'));
      await area.sendKeys(text);
    }
    await driver.findElement(By.css('[data-testid=script-save]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=segment] .marks mark')), 10_000);
    const marked = await driver.findElement(By.css('[data-testid=segment] .marks')).getText();
    assert.match(marked, /最低价/);
    assert.match(marked, /99 元/);
    await shot(driver, '10-scripts-editor.png');

    await driver.findElement(By.css('[data-testid=export-srt]')).click();
    const exported = await driver.wait(until.elementLocated(By.css('[data-testid=last-export]')), 10_000);
    const srt = readFileSync(await exported.getText(), 'utf8');
    assert.match(srt, /00:00:00,000 --> /);
    assert.match(srt, /人工智能/);
    assert.match(srt, /虚拟主播/);

    // The teleprompter opens in its own window and works with the keyboard alone.
    const main = await driver.getWindowHandle();
    await driver.findElement(By.css('[data-testid=open-teleprompter]')).click();
    await driver.wait(async () => (await driver.getAllWindowHandles()).length === 2, 15_000);
    const prompter = (await driver.getAllWindowHandles()).find((h) => h !== main);
    await driver.switchTo().window(prompter);
    const tp = await driver.wait(until.elementLocated(By.css('[data-testid=teleprompter]')), 15_000);
    await driver.wait(until.elementLocated(By.css('[data-testid=tp-card]')), 10_000);
    assert.match(await driver.findElement(By.css('[data-testid=tp-card]')).getText(), /3 号链接/);
    const attr = (name) => tp.getAttribute(name);
    const keys = (...k) => driver.actions().sendKeys(...k).perform();
    const speed0 = Number(await attr('data-speed'));
    await keys(Key.ARROW_UP, Key.ARROW_UP);
    await driver.wait(async () => Number(await attr('data-speed')) === speed0 + 20, 5_000);
    await keys(Key.SPACE);
    await driver.wait(until.elementLocated(By.css('[data-testid=tp-countdown]')), 3_000);
    await driver.wait(async () => (await attr('data-running')) === '1', 6_000);
    await shot(driver, '11-teleprompter.png');
    await keys(Key.SPACE);
    await driver.wait(async () => (await attr('data-running')) === '0', 3_000);
    await keys(Key.PAGE_DOWN);
    await driver.wait(async () => (await attr('data-segment')) === '1', 3_000);
    await keys(Key.PAGE_UP);
    await driver.wait(async () => (await attr('data-segment')) === '0', 3_000);
    await driver.switchTo().window(main);
  } finally {
    await driver.quit();
  }
});

test('images: a tiny model imported by path, generated with a live preview, recalled from the gallery, exported with the label', async () => {
  // A random-weight SD in the real diffusers layout, written by the CLI the tests just built.
  const src = randomImageModel('tiny', 'tiny-sd');
  const driver = await startApp();
  const setNumber = async (el, v) => {
    await el.clear();
    await el.sendKeys(String(v));
  };
  const count = (css) => countOf(driver, css);
  const textOf = async (css) => {
    try {
      const found = await driver.findElements(By.css(css));
      return found.length === 1 ? await found[0].getText() : '';
    } catch (e) {
      if (e.name === 'StaleElementReferenceError') return '';
      throw e;
    }
  };
  try {
    await driver.findElement(By.css('[data-view=models]')).click();
    const path = await driver.wait(until.elementLocated(By.css('[data-testid=image-import-path]')), 10_000);
    await path.sendKeys(src);
    await driver.findElement(By.css('[data-testid=image-import]')).click();
    await driver.wait(until.elementLocated(By.xpath("//*[@data-testid='image-models']//strong[text()='tiny-sd']")), 20_000);

    // The webview keeps the last form between runs of the app (per user, not per data folder).
    await driver.executeScript("localStorage.removeItem('atelier.imageForm')");
    await driver.findElement(By.css('[data-view=images]')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=image-model] option[value=tiny-sd]')), 10_000);
    const prompt = await driver.findElement(By.css('[data-testid=image-prompt]'));
    await prompt.clear();
    await prompt.sendKeys('一只红苹果, (studio light:1.2)');
    await setNumber(driver.findElement(By.css('[data-testid=image-width]')), 256);
    await setNumber(driver.findElement(By.css('[data-testid=image-height]')), 256);
    await setNumber(driver.findElement(By.css('[data-testid=image-seed]')), 42);
    await setNumber(driver.findElement(By.css('[data-testid=image-batch]')), 2);
    await driver.findElement(By.css('[data-testid=image-generate]')).click();

    // Denoising previews stream in while it runs, then both images land in the gallery.
    const preview = await driver.wait(until.elementLocated(By.css('[data-testid=image-preview]')), 60_000);
    assert.match(await preview.getAttribute('src'), /^data:image\/png;base64,/);
    await shot(driver, '12-images-preview.png');
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 2, 120_000);
    const rec = await driver.wait(until.elementLocated(By.css('[data-testid=image-record]')), 10_000);
    assert.match(await rec.getText(), /43/);
    await driver.wait(async () => (await count('[data-testid=image-stage] .canvas img')) === 1, 10_000);
    await shot(driver, '13-images-gallery.png');

    // The older image, recalled: every setting returns to the form.
    await prompt.clear();
    await prompt.sendKeys('something else');
    const tiles = await driver.findElements(By.css('[data-testid=gallery-grid] .tile'));
    await tiles[1].click();
    await driver.wait(async () => /\b42\b/.test(await textOf('[data-testid=image-record]')), 10_000);
    await driver.findElement(By.css('[data-testid=image-recall]')).click();
    await driver.wait(async () => (await prompt.getAttribute('value')) === '一只红苹果, (studio light:1.2)', 5_000);
    assert.equal(await driver.findElement(By.css('[data-testid=image-seed]')).getAttribute('value'), '42');

    // Export: a PNG with the visible label and the metadata, in the exports folder.
    await driver.findElement(By.css('[data-testid=image-export]')).click();
    await driver.findElement(By.css('[data-testid=image-export-go]')).click();
    const out = await driver.wait(until.elementLocated(By.css('[data-testid=image-exported]')), 15_000);
    const file = await out.getText();
    assert.ok(file.startsWith(join(home, 'exports')), file);
    const png = readFileSync(file).toString('latin1');
    assert.match(png, /TC260:AIGC/);
    assert.match(png, /Seed: 42/);
    await shot(driver, '14-images-exported.png');

    // Variations of the recalled image: four more, same seed, counting variation seeds.
    await driver.findElement(By.css('[data-testid=image-variations]')).click();
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 6, 120_000);
    await driver.wait(async () => /42/.test(await textOf('[data-testid=image-record]')), 10_000);

    // Inpainting: the chosen image as the source, a stroke painted over its middle.
    await driver.findElement(By.css('[data-testid=image-use-source]')).click();
    await driver.findElement(By.css('[data-testid=mask-paint]')).click();
    const canvas = await driver.wait(until.elementLocated(By.css('[data-testid=mask-canvas]')), 10_000);
    await driver.wait(async () => Number(await canvas.getAttribute('width')) === 256, 10_000);
    await driver.actions().move({ origin: canvas, x: -40, y: 0 }).press().move({ origin: canvas, x: 40, y: 10 }).release().perform();
    await shot(driver, '15-images-mask.png');
    await driver.findElement(By.css('[data-testid=mask-save]')).click();
    await driver.wait(async () => (await count('[data-testid=mask-painter]')) === 0, 10_000);
    await driver.wait(async () => /修改蒙版/.test(await textOf('[data-testid=mask-paint]')), 10_000);
    await setNumber(driver.findElement(By.css('[data-testid=image-batch]')), 1);
    await driver.findElement(By.css('[data-testid=image-generate]')).click();
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 7, 120_000);
    await shot(driver, '16-images-inpainted.png');

    // Tags and thumbs on the chosen image; the gallery filters by either.
    await driver.wait(async () => (await count('[data-testid=image-tags]')) === 1, 10_000);
    const tagInput = await driver.findElement(By.css('[data-testid=image-tag-input]'));
    await tagInput.sendKeys('主图，双十一', Key.ENTER);
    await driver.wait(async () => /主图[\s\S]*双十一/.test(await textOf('[data-testid=image-tags]')), 10_000);
    await driver.findElement(By.css('[data-testid=image-rate-up]')).click();
    await driver.wait(async () => (await driver.findElement(By.css('[data-testid=image-rate-up]')).getAttribute('aria-pressed')) === 'true', 5_000);
    const tagFilter = await driver.wait(until.elementLocated(By.css('[data-testid=gallery-tag]')), 10_000);
    await tagFilter.findElement(By.xpath("./option[starts-with(., '主图')]")).click();
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 1, 10_000);
    await shot(driver, '17-images-tags.png');
    await tagFilter.findElement(By.css('option[value=""]')).click();
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 7, 10_000);
    await driver.findElement(By.css('[data-testid=gallery-rated-up]')).click();
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 1, 10_000);
    await driver.findElement(By.css('[data-testid=gallery-rated-up]')).click();
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 7, 10_000);

    // A ComfyUI server on loopback (without a WebSocket, so the run is followed by polling):
    // set up and checked on the Models page, its checkpoint chosen, the image in the gallery.
    const comfy = await fakeComfy();
    try {
      await driver.findElement(By.css('[data-view=models]')).click();
      const url = await driver.wait(until.elementLocated(By.css('[data-testid=comfy-url]')), 10_000);
      await url.sendKeys(comfy.url, Key.TAB);
      const check = await driver.findElement(By.css('[data-testid=comfy-check]'));
      await driver.wait(() => check.isEnabled(), 10_000);
      await clickFree(driver, check);
      await driver.wait(async () => /0\.3\.99[\s\S]*2/.test(await textOf('[data-testid=comfy-status]')), 10_000);
      await driver.findElement(By.css('[data-view=images]')).click();
      const option = await driver.wait(until.elementLocated(By.css('[data-testid=image-model] option[value="comfyui:e2e-base.safetensors"]')), 10_000);
      await option.click();
      await driver.wait(async () => (await count('[data-testid=comfy-note]')) === 1, 5_000);
      await setNumber(driver.findElement(By.css('[data-testid=image-seed]')), 7);
      await driver.findElement(By.css('[data-testid=image-generate]')).click();
      await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === 8, 60_000);
      await driver.wait(async () => /comfyui:e2e-base\.safetensors[\s\S]*ComfyUI/.test(await textOf('[data-testid=image-record]')), 10_000);
      assert.equal(comfy.prompts.length, 1);
      assert.equal(comfy.prompts[0]['5'].inputs.seed, 7);
      assert.equal(comfy.prompts[0]['1'].inputs.ckpt_name, 'e2e-base.safetensors');
      await shot(driver, '18-images-comfyui.png');
    } finally {
      comfy.close();
    }
  } finally {
    await driver.quit();
  }
});

// A PNG of one colour, written by hand (CRC-32 and zlib), for the fake ComfyUI's output.
function crc32(buf) {
  let crc = 0xffffffff;
  for (const b of buf) {
    let c = (crc ^ b) & 0xff;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    crc = (crc >>> 8) ^ c;
  }
  return (crc ^ 0xffffffff) >>> 0;
}
function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}
function solidPng(w, h, [r, g, b]) {
  const head = Buffer.alloc(13);
  head.writeUInt32BE(w, 0);
  head.writeUInt32BE(h, 4);
  head[8] = 8; // bit depth
  head[9] = 2; // RGB
  const row = Buffer.alloc(1 + 3 * w);
  for (let x = 0; x < w; x++) row.set([r, g, b], 1 + 3 * x);
  const raw = Buffer.concat(Array.from({ length: h }, () => row));
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', head),
    pngChunk('IDAT', deflateSync(raw)), pngChunk('IEND', Buffer.alloc(0))]);
}

// Just enough of ComfyUI's HTTP API for one txt2img run: the checkpoint list, /prompt,
// /history and /view. No /ws: Atelier falls back to polling.
async function fakeComfy() {
  const prompts = [];
  const images = new Map();
  const history = {};
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const json = (code, v) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(v));
    };
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (url.pathname === '/system_stats') return json(200, { system: { comfyui_version: '0.3.99' }, devices: [{ name: 'cuda:0 e2e' }] });
      if (url.pathname === '/object_info/CheckpointLoaderSimple') {
        return json(200, { CheckpointLoaderSimple: { input: { required: { ckpt_name: [['e2e-base.safetensors', 'e2e-other.safetensors'], {}] } } } });
      }
      if (url.pathname === '/prompt' && req.method === 'POST') {
        const graph = JSON.parse(body).prompt;
        prompts.push(graph);
        const id = `p${prompts.length}`;
        const { width, height } = graph['4'].inputs;
        images.set(`${id}.png`, solidPng(width, height, [graph['5'].inputs.seed % 256, 120, 200]));
        history[id] = { outputs: { 7: { images: [{ filename: `${id}.png`, subfolder: '', type: 'temp' }] } },
          status: { status_str: 'success', completed: true, messages: [] } };
        return json(200, { prompt_id: id, number: 0, node_errors: {} });
      }
      if (url.pathname.startsWith('/history/')) {
        const id = url.pathname.slice('/history/'.length);
        return json(200, history[id] ? { [id]: history[id] } : {});
      }
      if (url.pathname === '/view' && images.has(url.searchParams.get('filename'))) {
        res.writeHead(200, { 'content-type': 'image/png' });
        return res.end(images.get(url.searchParams.get('filename')));
      }
      json(404, { error: 'not found' });
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, prompts, close: () => server.close() };
}

test('images: an SDXL-shaped model imported, listed with both text encoders, drawing into the gallery', async () => {
  // The tiny SDXL: two text encoders and tokenizers, the pooled embedding and size ids.
  const src = randomImageModel('tiny-xl', 'tiny-xl');
  const driver = await startApp();
  const count = (css) => countOf(driver, css);
  try {
    // A project of its own (creating one selects it), so the test also runs alone.
    await driver.findElement(By.css('[data-testid=new-project-name]')).sendKeys('SDXL 图片');
    await driver.findElement(By.css('[data-testid=create-project]')).click();
    await driver.wait(until.elementLocated(By.xpath("//ul[@data-testid='project-list']//strong[text()='SDXL 图片']")), 10_000);
    await driver.findElement(By.css('[data-view=models]')).click();
    const path = await driver.wait(until.elementLocated(By.css('[data-testid=image-import-path]')), 10_000);
    await path.sendKeys(src);
    await driver.findElement(By.css('[data-testid=image-import]')).click();
    const row = await driver.wait(until.elementLocated(By.xpath("//*[@data-testid='image-models']//tr[.//strong[text()='tiny-xl']]")), 20_000);
    const listed = await row.getText();
    assert.match(listed, /text_encoder:/);
    assert.match(listed, /text_encoder_2:/);
    // What one image at its size asks of this machine (the memory check's estimate).
    assert.match(listed, /≈ \d+\.\d GiB/);

    await driver.executeScript("localStorage.removeItem('atelier.imageForm')");
    await driver.findElement(By.css('[data-view=images]')).click();
    const option = await driver.wait(until.elementLocated(By.css('[data-testid=image-model] option[value=tiny-xl]')), 10_000);
    await option.click();
    const before = await count('[data-testid=gallery-grid] .tile');
    const prompt = await driver.findElement(By.css('[data-testid=image-prompt]'));
    await prompt.clear();
    await prompt.sendKeys('a lighthouse at dusk');
    for (const [id, v] of [['image-width', 128], ['image-height', 128], ['image-seed', 11], ['image-batch', 1]]) {
      const el = await driver.findElement(By.css(`[data-testid=${id}]`));
      await el.clear();
      await el.sendKeys(String(v));
    }
    await driver.findElement(By.css('[data-testid=image-generate]')).click();
    await driver.wait(async () => (await count('[data-testid=gallery-grid] .tile')) === before + 1, 120_000);
    const rec = await driver.wait(until.elementLocated(By.css('[data-testid=image-record]')), 10_000);
    await driver.wait(async () => /tiny-xl/.test(await rec.getText()), 10_000);
    await shot(driver, '19-images-sdxl.png');
  } finally {
    await driver.quit();
  }
});

test('a damaged database: the app says so, and starts a new one keeping the old file', async () => {
  const { readdirSync, readFileSync } = await import('node:fs');
  for (const f of ['atelier.db-wal', 'atelier.db-shm']) rmSync(join(home, f), { force: true });
  writeFileSync(join(home, 'atelier.db'), Buffer.from('this is not a database '.repeat(200)));
  const driver = await session();
  try {
    const card = await driver.wait(until.elementLocated(By.css('[data-testid=startup-error]')), 30_000);
    assert.equal(await card.getAttribute('data-kind'), 'corrupt_database');
    await shot(driver, '04-corrupt-database.png');
    await card.findElement(By.css('button.primary')).click();
    await driver.wait(until.elementLocated(By.css('[data-testid=project-list]')), 10_000);
    await driver.wait(until.elementLocated(By.css('[data-testid=projects-empty]')), 5_000);
    const kept = readdirSync(home).filter((f) => f.startsWith('atelier.db.damaged-'));
    assert.equal(kept.length, 1);
    assert.match(readFileSync(join(home, kept[0]), 'utf8'), /^this is not a database/);
  } finally {
    await driver.quit();
  }
});
