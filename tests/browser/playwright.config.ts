/**
 * The browser suite: headless Chromium from Debian (/usr/bin/chromium) drives the reference web client
 * against a real gateway (see run.sh, which starts everything and sets the BROWSER_* variables).
 */
import { defineConfig } from "@playwright/test";

const webPort = process.env.BROWSER_WEB_PORT ?? "25502";

export default defineConfig({
  testDir: "specs",
  outputDir: "../../var/browser/test-results",
  timeout: 120_000,
  globalTimeout: 15 * 60_000,
  expect: { timeout: 15_000 },
  workers: 1,
  fullyParallel: false,
  retries: 0,
  reporter: [["list"], ["html", { outputFolder: "../../var/browser/report", open: "never" }]],
  use: {
    browserName: "chromium",
    baseURL: `http://localhost:${webPort}`,
    viewport: { width: 1000, height: 760 },
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      // Root needs --no-sandbox; the rest keeps Chromium off the network (this machine has none).
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
  },
  webServer: {
    command: "node serve.mjs",
    url: `http://127.0.0.1:${webPort}/config.json`,
    reuseExistingServer: false,
    timeout: 30_000,
    stdout: "ignore",
  },
});
