// Drives Debian's Chromium (playwright-core, executablePath /usr/bin/chromium) through warren's
// dashboards for tests/api/dashboard.rs. It only observes and acts: it prints one JSON line of what
// it saw, and the Rust test makes every assertion against the API.
//
//   node dashboard.mjs tour  '<json args>'   log in by link and by key, read every figure, create a
//                                            key, run the playground, axe-core, screenshots
//   node dashboard.mjs watch '<json args>'   log in by link and record the onboarding progress the
//                                            page's own script shows while the test syncs products
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { readFileSync, mkdirSync, writeFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const [scenario, raw] = process.argv.slice(2);
const args = JSON.parse(raw || "{}");
const SIZES = [
  [1280, 800],
  [390, 844],
];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

/** Every `data-metric` on the page: name -> data-value (or text when there is none). */
async function metrics(page) {
  return page.$$eval("[data-metric]", (els) => Object.fromEntries(els.map((e) => [e.dataset.metric, e.dataset.value ?? e.textContent.trim()])));
}

/** Full-page screenshots at both sizes, under args.shots. */
async function shoot(page, name) {
  mkdirSync(args.shots, { recursive: true });
  for (const [w, h] of SIZES) {
    await page.setViewportSize({ width: w, height: h });
    await page.screenshot({ path: `${args.shots}/${name}-${w}x${h}.png`, fullPage: true });
  }
  await page.setViewportSize({ width: SIZES[0][0], height: SIZES[0][1] });
}

/** axe-core's serious and critical violations on the current page. */
async function axe(page) {
  // Evaluated through the DevTools protocol: the page's CSP forbids inline scripts, as it should.
  await page.evaluate(AXE);
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  return result.violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) }));
}

async function newPage() {
  const context = await browser.newContext({ viewport: { width: SIZES[0][0], height: SIZES[0][1] } });
  const page = await context.newPage();
  const seen = { dialogs: [], errors: [], csp: [] };
  page.on("dialog", async (d) => {
    seen.dialogs.push(d.message());
    await d.dismiss();
  });
  page.on("pageerror", (e) => seen.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") seen.errors.push(m.text());
  });
  return { context, page, seen };
}

const out = {};
try {
  if (scenario === "tour") {
    // 1. The one-time link.
    const { page, seen } = await newPage();
    await page.goto(args.link);
    await page.waitForURL("**/dashboard");
    out.after_link = new URL(page.url()).pathname;
    out.overview = await metrics(page);
    out.onboarding_text = await page.locator("#onboarding").innerText();
    out.header_text = await page.locator("header.top").innerText();
    out.axe_overview = await axe(page);
    await shoot(page, "portal-overview");

    await page.goto(new URL("/dashboard/usage", page.url()).href);
    out.usage_rows = await page.locator("tbody tr").count();
    await shoot(page, "portal-usage");

    // 2. The playground: the attacker-controlled path and text render as text.
    await page.goto(new URL("/dashboard/search", page.url()).href);
    await page.fill("#q", args.query);
    await page.check('input[name="mode"][value="keyword"]');
    await page.click('button[type="submit"]:has-text("Search")');
    await page.waitForSelector('[data-metric="search.results"]');
    out.search = await metrics(page);
    out.search_paths = await page.locator(".result-path").allInnerTexts();
    out.injected_images = await page.locator("main img").count();
    await shoot(page, "portal-search");

    // 3. Keys: create one in the UI; the test uses it over REST.
    await page.goto(new URL("/dashboard/keys", page.url()).href);
    out.axe_keys = await axe(page);
    await page.fill("#key-name", args.key_name);
    await page.click('button:has-text("Create key")');
    await page.waitForSelector('[data-metric="new_key"]');
    out.new_key = await page.getAttribute('[data-metric="new_key"]', "data-value");
    out.key_rows = await page.locator("tbody tr").count();
    await shoot(page, "portal-keys");

    // 4. Billing, backups, audit log, recommendations, jobs.
    await page.goto(new URL("/dashboard/billing", page.url()).href);
    out.billing = await metrics(page);
    out.axe_billing = await axe(page);
    out.statement_links = await page.locator('a[href^="/dashboard/billing/"]').count();
    await shoot(page, "portal-billing");
    await page.goto(new URL("/dashboard/backups", page.url()).href);
    out.backups = await metrics(page);
    await shoot(page, "portal-backups");
    await page.goto(new URL("/dashboard/audit", page.url()).href);
    out.audit_text = await page.locator("main").innerText();
    await shoot(page, "portal-audit");
    await page.goto(new URL("/dashboard/recommendations", page.url()).href);
    out.axe_recommendations = await axe(page);
    await shoot(page, "portal-recommendations");
    await page.goto(new URL("/dashboard/jobs", page.url()).href);
    await shoot(page, "portal-jobs");

    // 5. Log out; the old page's session is gone.
    await page.click('button:has-text("Log out")');
    await page.waitForURL("**/dashboard/login");
    out.after_logout = new URL(page.url()).pathname;
    await page.goto(new URL("/dashboard", page.url()).href);
    out.after_logout_visit = new URL(page.url()).pathname;
    await shoot(page, "portal-login");
    out.dialogs = seen.dialogs;
    out.errors = seen.errors;

    // 6. A second browser logs in with the admin key.
    const b = await newPage();
    await b.page.goto(`${args.tenant_origin}/dashboard`);
    out.key_login_start = new URL(b.page.url()).pathname;
    await b.page.fill("#credential", args.admin_key);
    await b.page.click('button:has-text("Log in")');
    await b.page.waitForURL("**/dashboard");
    out.key_login = await metrics(b.page);

    // 7. The operator console on the apex.
    const c = await newPage();
    await c.page.goto(`${args.apex}/admin`);
    out.console_start = new URL(c.page.url()).pathname;
    await c.page.fill("#admin-token", args.admin_token);
    await c.page.click('button:has-text("Log in")');
    await c.page.waitForURL("**/admin");
    out.console = await metrics(c.page);
    out.axe_console = await axe(c.page);
    await shoot(c.page, "console-overview");
    await c.page.goto(`${args.apex}/admin/tenants`);
    out.console_tenants = await metrics(c.page);
    await shoot(c.page, "console-tenants");
    await c.page.click('a[href="/admin/tenants/acme"]');
    await c.page.waitForURL("**/admin/tenants/acme");
    out.console_tenant = await metrics(c.page);
    await shoot(c.page, "console-tenant");
    out.console_errors = c.seen.errors;
  } else if (scenario === "watch") {
    const { page } = await newPage();
    await page.goto(args.link);
    await page.waitForURL("**/dashboard");
    const sel = '[data-metric="onboarding.products_synced"]';
    const values = [];
    const deadline = Date.now() + (args.timeout_ms || 60000);
    // The page is never reloaded: what changes, app.js changed.
    for (;;) {
      const v = Number(await page.getAttribute(sel, "data-value"));
      if (values[values.length - 1] !== v) values.push(v);
      // Tell the test the page shows its first figure, so the sync starts only after it loaded.
      if (values.length === 1 && args.ready) writeFileSync(args.ready, String(v));
      if (v >= args.total || Date.now() > deadline) break;
      await page.waitForTimeout(250);
    }
    out.values = values;
    out.done = await page.getAttribute('li[data-step="products_synced"]', "data-done");
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
} catch (e) {
  out.failure = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
