// Drives tracelake's trace view (served by `tracelake serve --query-http`) in headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core) as a user would, and
// prints what the page showed as one JSON object for tests/it/ui.rs to check.
//
//   node trace_view.js BASE_URL SCENARIO_JSON
//
// SCENARIO_JSON: {"service", "attribute", "trace", "click", "big", "screenshots"}: the
// service and `key=value` attribute to search by, the trace to open (from the results) and
// the span ids to click in it, a large trace to open and time, and the directory for
// screenshots ("" for none).
const { chromium } = require("playwright-core");

const [base, scenarioText] = process.argv.slice(2);
const scenario = JSON.parse(scenarioText);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

async function searchRows(page) {
  await page.waitForFunction(() => {
    const s = document.getElementById("search-status");
    return s.classList.contains("done") || s.classList.contains("empty") || s.classList.contains("error");
  });
  return page.$$eval("#results:not([hidden]) tbody tr", (rows) =>
    rows.map((r) => ({
      trace: r.dataset.traceId,
      cells: [...r.querySelectorAll("td")].map((td) => td.textContent),
    })));
}

async function statusText(page, id) {
  await page.waitForSelector(`#${id}.error, #${id}.empty, #${id}.done`);
  return page.$eval(`#${id}`, (n) => ({ kind: n.className.replace("status", "").trim(), text: n.textContent }));
}

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = {};
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
    const failures = [];
    page.on("pageerror", (e) => failures.push(String(e)));

    // The search page: the service picker is filled from the tag values endpoint.
    await page.goto(base + "/");
    await page.waitForFunction((service) =>
      [...document.querySelectorAll("#service option")].some((o) => o.value === service), scenario.service);
    out.services = await page.$$eval("#service option", (os) => os.map((o) => o.value).filter(Boolean));
    await page.selectOption("#service", scenario.service);
    await page.click("#search-button");
    out.by_service = await searchRows(page);
    out.by_service_query = await page.textContent("#query-shown");

    await page.selectOption("#service", "");
    await page.fill("#attributes", scenario.attribute);
    await page.click("#search-button");
    out.by_attribute = await searchRows(page);
    out.by_attribute_query = await page.textContent("#query-shown");
    if (scenario.screenshots) await page.screenshot({ path: scenario.screenshots + "/ui-search.png" });

    // Opening a result goes to its waterfall.
    await page.click(`#results tbody tr[data-trace-id="${scenario.trace}"] td`);
    await page.waitForSelector(".span-row");
    out.url = page.url();
    out.rows = await page.$$eval(".span-row", (rows) => rows.map((r) => ({
      span: r.dataset.spanId,
      depth: Number(r.dataset.depth),
      order: Number(r.dataset.order),
      left: Number(r.dataset.left),
      width: Number(r.dataset.width),
      error: r.classList.contains("error"),
      anomaly: r.dataset.anomaly,
      name: r.querySelector(".name").textContent,
      indent: parseFloat(r.querySelector(".span-label").style.paddingLeft),
    })));
    out.details = [];
    for (const span of scenario.click) {
      await page.click(`.span-row[data-span-id="${span}"]`);
      await page.waitForFunction((id) => {
        const row = document.querySelector(".span-row.selected");
        return row && row.dataset.spanId === id && document.querySelector("#details h2");
      }, span);
      out.details.push(await page.$eval("#details", (d) => ({
      name: d.querySelector("h2").textContent,
      facts: Object.fromEntries([...d.querySelectorAll("tr[data-fact]")].map((r) => [r.dataset.fact, r.children[1].textContent])),
      attributes: [...d.querySelectorAll("table.attributes tr")].map((r) => [r.dataset.key, r.dataset.type, r.querySelector(".value").textContent]),
      resource: [...d.querySelectorAll("table.resource tr")].map((r) => [r.dataset.key, r.querySelector(".value").textContent]),
      events: [...d.querySelectorAll(".event")].map((e) => e.dataset.event),
      links: [...d.querySelectorAll(".link")].map((l) => l.dataset.link),
    })));
    }
    if (scenario.screenshots) await page.screenshot({ path: scenario.screenshots + "/ui-trace.png" });

    // Errors: an unknown id, a malformed id, a query the server refuses.
    await page.goto(base + "/trace/" + "c".repeat(32));
    out.unknown = await statusText(page, "trace-status");
    await page.goto(base + "/trace/not-a-trace-id");
    out.malformed_id = await statusText(page, "trace-status");
    await page.goto(base + "/?traceql=" + encodeURIComponent("{ span.a = }"));
    out.malformed_query = await statusText(page, "search-status");
    await page.goto(base + "/?traceql=" + encodeURIComponent('{ name = "no such span anywhere" }'));
    out.no_match = await statusText(page, "search-status");

    // A large trace: the time from the request to its rows in the document.
    if (scenario.big) {
      await page.goto(base + "/trace/" + scenario.big);
      await page.waitForFunction(() => document.body.dataset.renderMs !== undefined, null, { timeout: 60000 });
      out.big_rows = await page.$$eval(".span-row", (rows) =>
        rows.map((r) => [r.dataset.spanId, Number(r.dataset.depth), r.dataset.anomaly]));
      out.big_render_ms = Number(await page.evaluate(() => document.body.dataset.renderMs));
    }
    out.page_errors = failures;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
