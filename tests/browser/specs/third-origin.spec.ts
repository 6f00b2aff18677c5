/**
 * A page on a third origin, in the browser of a signed-in clinician, can neither read patient data (CORS)
 * nor write (CSRF, and SameSite=Strict for another site). Two third origins: http://localhost:<port> is
 * another origin of the same site as the gateway (the browser sends the cookies; CORS and the CSRF header
 * stop it); http://127.0.0.1:<port> is another site (the browser does not even send the cookies).
 */
import { expect, test, type Page } from "@playwright/test";
import { apiGet, bearer, shot, signIn, stack, thirdPort } from "./support";

const patient = stack.davePatients[1] as string;
const lettersUrl = `${stack.gatewayUrl}/patients/${patient}/letters`;
const letter = { title: "Forged", body: "Written by another site.", status: "draft" };

/** In the third-party page: try to read, and report what happened (never the data itself). */
async function tryToRead(page: Page, url: string): Promise<string> {
  return page.evaluate(async (target) => {
    try {
      const response = await fetch(target, { credentials: "include" });
      return `read ${response.status}: ${(await response.text()).slice(0, 200)}`;
    } catch (error) {
      return `blocked: ${String(error)}`;
    }
  }, url);
}

/** In the third-party page: a JSON write with the CSRF header (needs a CORS preflight). */
async function tryToWriteWithHeader(page: Page, csrf: string): Promise<string> {
  return page.evaluate(
    async ({ url, body, token }) => {
      try {
        const response = await fetch(url, {
          method: "POST",
          credentials: "include",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": token },
          body: JSON.stringify(body),
        });
        return `sent ${response.status}`;
      } catch (error) {
        return `blocked: ${String(error)}`;
      }
    },
    { url: lettersUrl, body: letter, token: csrf },
  );
}

/** In the third-party page: a "simple" request, which needs no preflight: the server gets it, the page sees nothing. */
async function sendWithoutPreflight(page: Page): Promise<number> {
  const answer = page.waitForResponse((r) => r.url() === lettersUrl && r.request().method() === "POST");
  await page.evaluate(
    ({ url, body }) =>
      fetch(url, {
        method: "POST",
        mode: "no-cors",
        credentials: "include",
        headers: { "Content-Type": "text/plain" },
        body: JSON.stringify(body),
      }),
    { url: lettersUrl, body: letter },
  );
  return (await answer).status();
}

/** From the third-party page: submit an HTML form to the gateway (a top-level navigation); returns the answer's text. */
async function submitForm(page: Page): Promise<string> {
  await page.evaluate(
    ({ url, body }) => {
      const form = document.createElement("form");
      form.method = "POST";
      form.action = url;
      form.enctype = "text/plain"; // a form can send any text, JSON-shaped included, without a preflight
      const field = document.createElement("input");
      field.name = "letter";
      field.value = body;
      form.append(field);
      document.body.append(form);
      form.submit();
    },
    { url: lettersUrl, body: JSON.stringify(letter) },
  );
  await page.waitForURL(lettersUrl);
  return page.locator("body").innerText();
}

test("a third origin can neither read patient data nor write", async ({ page, context }) => {
  await signIn(page, stack.dave);
  await page.goto(`/#/patients/${patient}`);
  await expect(page.getByRole("region", { name: "Letters" })).toBeVisible();

  await test.step("same site, other origin: the cookies go, CORS and CSRF stop it", async () => {
    const third = await context.newPage();
    await third.goto(`http://localhost:${thirdPort}/`);
    expect(await tryToRead(third, `${stack.gatewayUrl}/patients/${patient}`)).toMatch(/^blocked: TypeError/);
    expect(await tryToRead(third, `${stack.gatewayUrl}/auth/csrf`)).toMatch(/^blocked: TypeError/);
    // On one host, a page on another port can read the CSRF cookie: the preflight still refuses the header.
    const stolen = await third.evaluate(() => /__Host-gw_csrf=([^;]+)/.exec(document.cookie)?.[1] ?? "");
    expect(stolen).not.toBe("");
    expect(await tryToWriteWithHeader(third, stolen)).toMatch(/^blocked: TypeError/);
    expect(await sendWithoutPreflight(third)).toBe(403); // csrf_failed: cookies, but no header
    await shot(third, "30-third-origin-same-site");
    const answer = await submitForm(third);
    expect(answer).toContain("csrf_failed");
    await shot(third, "31-third-origin-form-post-same-site");
    await third.close();
  });

  await test.step("another site: the cookies do not even go (SameSite=Strict)", async () => {
    const third = await context.newPage();
    await third.goto(`http://127.0.0.1:${thirdPort}/`);
    expect(await tryToRead(third, `${stack.gatewayUrl}/patients/${patient}`)).toMatch(/^blocked: TypeError/);
    expect(await tryToWriteWithHeader(third, "guessed")).toMatch(/^blocked: TypeError/);
    expect(await sendWithoutPreflight(third)).toBe(401); // not_authenticated: no cookies at all
    const answer = await submitForm(third);
    expect(answer).toContain("not_authenticated");
    await shot(third, "32-third-site-form-post");
    await third.close();
  });

  await test.step("nothing was written, and the clinician is still signed in", async () => {
    const token = await bearer(stack.dave);
    const letters = await apiGet<{ items: unknown[] }>(`/patients/${patient}/letters`, token);
    expect(letters.items).toEqual([]);
    await page.reload();
    await expect(page.getByText("Signed in as Dr Dave Browser")).toBeVisible();
  });
});
