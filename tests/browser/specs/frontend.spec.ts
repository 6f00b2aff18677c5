/**
 * The reference web client's whole flow, as a clinician does it: sign in with TOTP, register a patient,
 * search and follow the paging cursor, open the patient, write a letter whose answer is lost (the retry
 * with the same Idempotency-Key writes it once), read and amend it with If-Match (a second tab holding the
 * old version gets 412), list the letters, sign out, and find no patient data behind the back button.
 */
import { expect, test } from "@playwright/test";
import { freshTotpCode, gatewayAnswers, shot, stack } from "./support";

const GIVEN = "Erin";
const LETTER_TEXT = `Seen in clinic ${stack.runId}. Blood pressure well controlled; continue the current dose.`;

test("a clinician's day in the reference web client", async ({ page, context }) => {
  const answers = gatewayAnswers(context);
  let patientPath = "";

  await test.step("01 the login page", async () => {
    await page.goto("/");
    await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
    await shot(page, "01-sign-in");
  });

  await test.step("02 the password alone asks for the second factor", async () => {
    await page.getByLabel("Username").fill(stack.carol.username);
    await page.getByLabel("Password").fill(stack.carol.password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page.getByLabel("Authenticator code")).toBeVisible();
    await expect(page.getByRole("status")).toContainText("two-factor");
    await shot(page, "02-totp-required");
  });

  await test.step("03 the TOTP code signs in; the session is in __Host- cookies", async () => {
    await page.getByLabel("Authenticator code").fill(freshTotpCode());
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page.getByText("Signed in as Dr Carol Browser")).toBeVisible();
    const cookies = await context.cookies(stack.gatewayUrl + "/auth/refresh");
    const byName = new Map(cookies.map((cookie) => [cookie.name, cookie]));
    expect([...byName.keys()].sort()).toEqual(["__Host-gw_access", "__Host-gw_csrf", "__Secure-gw_refresh"]);
    for (const cookie of cookies) {
      expect(cookie.secure).toBe(true);
      expect(cookie.sameSite).toBe("Strict");
      expect(cookie.httpOnly).toBe(cookie.name !== "__Host-gw_csrf");
    }
    expect(byName.get("__Secure-gw_refresh")?.path).toBe("/auth/refresh");
    await shot(page, "03-signed-in");
  });

  await test.step("04 register a patient (201, Location, ETag)", async () => {
    const form = page.getByRole("form", { name: "Register a patient" });
    await form.getByLabel("Family name").fill(stack.family);
    await form.getByLabel("Given name").fill(GIVEN);
    await form.getByLabel("Birth date").fill("1990-05-17");
    await form.getByLabel("NHS number").fill(stack.newNhsNumber);
    await form.getByRole("button", { name: "Register" }).click();
    await expect(page.getByRole("status")).toHaveText("Patient registered.");
    await expect(page.getByRole("heading", { name: `${stack.family}, ${GIVEN}` })).toBeVisible();
    await expect(page.locator("[data-test=patient-etag]")).toHaveText('W/"1"');
    patientPath = new URL(page.url()).hash;
    expect(patientPath).toMatch(/^#\/patients\/[^/]+$/);
    await shot(page, "04-patient-registered");
  });

  await test.step("05 search and follow the paging cursor to the last page", async () => {
    await page.getByRole("link", { name: "Patients" }).click();
    const form = page.getByRole("form", { name: "Find a patient" });
    await form.getByLabel("Family name").fill(stack.family);
    await form.getByLabel("Per page").selectOption("2");
    await form.getByRole("button", { name: "Search" }).click();
    const results = page.getByRole("region", { name: "Search results" });
    const seen: string[] = [];
    for (const [number, rows] of [
      [1, 2],
      [2, 2],
      [3, 1],
    ] as const) {
      await expect(results.getByRole("heading")).toContainText(`Page ${number}`);
      await expect(results.getByRole("listitem")).toHaveCount(rows);
      seen.push(...(await results.getByRole("link").allTextContents()));
      await shot(page, `05-search-page-${number}`);
      if (number < 3) await results.getByRole("button", { name: "Next page" }).click();
    }
    await expect(results.getByRole("button", { name: "Next page" })).toHaveCount(0);
    expect(new Set(seen).size).toBe(5);
    expect(seen).toContain(`${stack.family}, ${GIVEN}`);
  });

  await test.step("06 open the patient from the results", async () => {
    // HAPI does not promise an order without _sort, so the patient may be on any of the pages above:
    // search again with a page that holds all five.
    const form = page.getByRole("form", { name: "Find a patient" });
    await form.getByLabel("Per page").selectOption("10");
    await form.getByRole("button", { name: "Search" }).click();
    const results = page.getByRole("region", { name: "Search results" });
    await expect(results.getByRole("heading")).toContainText("Page 1");
    await expect(results.getByRole("listitem")).toHaveCount(5);
    await results.getByRole("link", { name: `${stack.family}, ${GIVEN}` }).click();
    await expect(page.getByRole("heading", { name: `${stack.family}, ${GIVEN}` })).toBeVisible();
    expect(new URL(page.url()).hash).toBe(patientPath);
    await expect(page.getByRole("region", { name: "Letters" }).getByRole("listitem")).toHaveCount(0);
    await shot(page, "06-patient");
  });

  await test.step("07 write a letter whose answer is lost: Retry sends the same Idempotency-Key", async () => {
    const keys: string[] = [];
    let lostLetterId = "";
    const letters = `${stack.gatewayUrl}/patients/*/letters`;
    // The gateway writes the letter, but the answer never reaches the page (as on a dropped connection).
    await page.route(letters, async (route) => {
      if (route.request().method() !== "POST") return route.fallback();
      keys.push((await route.request().headerValue("Idempotency-Key")) ?? "");
      const answer = await route.fetch();
      expect(answer.status()).toBe(201);
      lostLetterId = ((await answer.json()) as { id: string }).id;
      await route.abort("connectionreset");
    });
    const form = page.getByRole("form", { name: "Write a letter" });
    await form.getByLabel("Title").fill("Clinic letter");
    await form.getByLabel("Text").fill(LETTER_TEXT);
    await form.getByRole("button", { name: "Save letter" }).click();
    await expect(page.getByRole("alert")).toHaveAttribute("data-code", "network_error");
    await shot(page, "07-letter-answer-lost");
    await page.unroute(letters);
    const retried = page.waitForResponse(
      (r) => r.url().includes("/letters") && r.request().method() === "POST",
    );
    await page.getByRole("button", { name: "Retry" }).click();
    const replay = await retried;
    keys.push((await replay.request().headerValue("Idempotency-Key")) ?? "");
    expect(replay.status()).toBe(201);
    expect(await replay.headerValue("Idempotent-Replayed")).toBe("true");
    expect(keys[0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(keys[1]).toBe(keys[0]);
    // The client read Idempotent-Replayed across origins (the gateway exposes it to CORS).
    await expect(page.getByRole("status")).toContainText("it was not written twice");
    const list = page.getByRole("region", { name: "Letters" }).getByRole("listitem");
    await expect(list).toHaveCount(1);
    await expect(list.getByRole("link", { name: "Clinic letter" })).toHaveAttribute(
      "href",
      new RegExp(`${lostLetterId}$`),
    );
    await shot(page, "08-letter-saved-once");
  });

  await test.step("08 a second letter, and the list", async () => {
    const form = page.getByRole("form", { name: "Write a letter" });
    await form.getByLabel("Title").fill("Referral to cardiology");
    await form.getByLabel("Text").fill("Please see this patient about palpitations.");
    await form.getByRole("button", { name: "Save letter" }).click();
    await expect(page.getByRole("status")).toContainText("Letter saved");
    await expect(page.getByRole("region", { name: "Letters" }).getByRole("listitem")).toHaveCount(2);
    await shot(page, "09-letters");
  });

  const second = await context.newPage();
  await test.step("09 read the letter (ETag), here and in a second tab", async () => {
    await page.getByRole("link", { name: "Clinic letter" }).click();
    await expect(page.getByRole("heading", { name: "Clinic letter" })).toBeVisible();
    await expect(page.getByRole("article", { name: "Letter" })).toContainText(LETTER_TEXT);
    await expect(page.locator("[data-test=letter-etag]")).toHaveText(/::1"$/);
    await shot(page, "10-letter");
    // The second tab did not log in: it picks up the session with GET /auth/csrf.
    await second.goto(page.url());
    await expect(second.getByRole("heading", { name: "Clinic letter" })).toBeVisible();
  });

  await test.step("10 amend with If-Match", async () => {
    const form = page.getByRole("form", { name: "Amend the letter" });
    await form.getByLabel("Text").fill(`${LETTER_TEXT} Review in six months.`);
    await form.getByRole("button", { name: "Save new version" }).click();
    await expect(page.getByRole("status")).toContainText("::2");
    await expect(page.locator("[data-test=letter-etag]")).toHaveText(/::2"$/);
    await expect(page.getByRole("article", { name: "Letter" })).toContainText("Review in six months.");
    await shot(page, "11-letter-amended");
  });

  await test.step("11 the tab holding the old version gets 412 stale_version", async () => {
    const form = second.getByRole("form", { name: "Amend the letter" });
    await form.getByLabel("Text").fill("An edit made on the old version.");
    await form.getByRole("button", { name: "Save new version" }).click();
    const alert = second.getByRole("alert");
    await expect(alert).toHaveAttribute("data-code", "stale_version");
    await expect(alert).toContainText("Current version");
    await expect(alert).toContainText("Request id");
    await shot(second, "12-stale-version-in-second-tab");
    await second.close();
  });

  await test.step("12 sign out: the session ends and the cookies are gone", async () => {
    await page.goto(`/${patientPath}`);
    await expect(page.getByRole("region", { name: "Letters" }).getByRole("listitem")).toHaveCount(2);
    await page.getByRole("button", { name: "Log out" }).click();
    await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
    expect(await context.cookies(stack.gatewayUrl)).toEqual([]);
    await shot(page, "13-signed-out");
  });

  await test.step("13 the back button shows no patient data", async () => {
    for (let i = 0; i < 3; i++) {
      await page.goBack();
      await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
      const text = await page.locator("body").innerText();
      expect(text).not.toContain(stack.family);
      expect(text).not.toContain(LETTER_TEXT);
    }
    await shot(page, "14-back-after-sign-out");
  });

  await test.step("14 every answer of the gateway was Cache-Control: no-store", async () => {
    const answered = answers.filter((answer) => answer.method !== "OPTIONS");
    expect(answered.length).toBeGreaterThan(20);
    for (const answer of answered)
      expect(answer.cacheControl, `${answer.method} ${answer.url}`).toBe("no-store");
  });
});
