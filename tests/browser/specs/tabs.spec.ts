/**
 * Two tabs of one browser share the gateway's cookies. When both refresh at the same moment they present
 * the same refresh token; the gateway's reuse grace gives both the same successor, so both stay signed in
 * and the browser keeps the one live token (no later refresh is taken for reuse).
 */
import { expect, test, type Page } from "@playwright/test";
import { apiGet, bearer, shot, signIn, stack } from "./support";

interface AuditPage {
  items: Array<{
    action: string;
    actor_username: string | null;
    outcome: string;
    details: Record<string, unknown> | null;
  }>;
}

/** Make the tab call refresh() at the wall-clock time `at` (ms); resolves to whether it worked. */
function refreshAt(page: Page, at: number): Promise<boolean> {
  return page.evaluate(async (when) => {
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, when - Date.now())));
    const client = (window as unknown as { referenceClient: { gateway: { refresh(): Promise<boolean> } } })
      .referenceClient;
    return client.gateway.refresh();
  }, at);
}

test("a second tab refreshing at the same moment stays signed in", async ({ page, context }) => {
  const patient = stack.davePatients[0] as string;
  const title = `Written in the second tab at ${new Date().toISOString()}`;
  await signIn(page, stack.dave);
  const other = await context.newPage();
  await other.goto("/");
  await expect(other.getByText("Signed in as Dr Dave Browser")).toBeVisible();
  for (const tab of [page, other]) {
    await tab.goto(`/#/patients/${patient}`);
    await expect(tab.getByRole("region", { name: "Letters" })).toBeVisible();
  }
  const refreshes = page.waitForResponse((r) => r.url().endsWith("/auth/refresh"));

  await test.step("both tabs refresh at once, with the same refresh cookie", async () => {
    const since = new Date(Date.now() - 1_000).toISOString();
    const at = Date.now() + 500;
    expect(await Promise.all([refreshAt(page, at), refreshAt(other, at)])).toEqual([true, true]);
    expect((await refreshes).status()).toBe(200);
    // The gateway saw the same token twice: once rotated, once a concurrent replay (not reuse).
    const admin = await bearer(stack.admin);
    const audit = await apiGet<AuditPage>(
      `/admin/audit?action=auth.refresh&from=${encodeURIComponent(since)}`,
      admin,
    );
    const dave = audit.items.filter((event) => event.actor_username === "dave");
    expect(dave.map((event) => event.outcome)).toEqual(["success", "success"]);
    expect(dave.filter((event) => event.details?.concurrent_replay === true)).toHaveLength(1);
    const reuse = await apiGet<AuditPage>("/admin/audit?action=auth.refresh_reuse", admin);
    expect(reuse.items).toEqual([]);
  });

  await test.step("both tabs go on working, writes included (same CSRF token)", async () => {
    const form = other.getByRole("form", { name: "Write a letter" });
    await form.getByLabel("Title").fill(title);
    await form.getByLabel("Text").fill("After both tabs refreshed at once.");
    await form.getByRole("button", { name: "Save letter" }).click();
    await expect(other.getByRole("status")).toContainText("Letter saved");
    await page.reload();
    await expect(page.getByRole("link", { name: title })).toBeVisible();
    await shot(page, "20-tab-one-after-concurrent-refresh");
    await shot(other, "21-tab-two-after-concurrent-refresh");
  });

  await test.step("after the grace, the browser's refresh cookie is the live token", async () => {
    await page.waitForTimeout(6_000); // longer than refresh_reuse_grace_seconds (5)
    expect(await refreshAt(other, Date.now())).toBe(true);
    expect(await refreshAt(page, Date.now())).toBe(true);
    await page.reload();
    await expect(page.getByRole("link", { name: title })).toBeVisible();
  });
});
