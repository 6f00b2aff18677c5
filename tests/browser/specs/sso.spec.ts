/**
 * Single sign-on in the browser (docs/sso.md), against the real Keycloak of tests/e2e/infra: a clinician
 * clicks "Sign in with the hospital", types the password into Keycloak's own page, comes back signed in and
 * reads a patient; when Keycloak ends the session (back-channel logout, triggered here through Keycloak's
 * admin API) the next call of the page gets 401 session_ended and the client shows its sign-in page. No
 * token of Keycloak is ever visible to the page. A Keycloak user whose roles map to no gateway role comes
 * back to the sign-in page with the no_roles message. Signing out of an SSO session ends Keycloak's too.
 */
import { expect, test, type BrowserContext, type Page } from "@playwright/test";
import { apiGet, bearer, keycloakAdmin, shot, signInAtIdp, stack } from "./support";

const sso = stack.sso;
const realmUrl = `${sso.keycloakUrl}/realms/${sso.realm}`;
const callbackUrl = `${stack.gatewayUrl}/auth/sso/${sso.provider}/callback`;
/** The gateway's own tokens (its access-token cookie) name this issuer. */
const GATEWAY_ISSUER = "fhir-openehr-gateway";
/** Longer than AUTHZ_CACHE_MS can be (1000): a revoked session is refused on every worker after this. */
const AUTHZ_CACHE_BOUND_MS = 1_100;
/** The gateway's session cookies (the login's binding cookie `__Host-gw_sso` is not one). */
const SESSION_COOKIES = ["__Host-gw_access", "__Host-gw_csrf", "__Secure-gw_refresh"];

interface AuditPage {
  items: Array<{
    action: string;
    actor_user_id: string | null;
    outcome: string;
    details: Record<string, unknown> | null;
  }>;
}

/** What a page received from the gateway: one answer's headers (Set-Cookie, Location included) or body. */
interface Received {
  what: string;
  text: string;
}

/** Record everything the pages of `context` receive from the gateway; `settle()` waits for the bodies. */
function gatewayTraffic(context: BrowserContext): { received: Received[]; settle: () => Promise<void> } {
  const received: Received[] = [];
  const reading: Array<Promise<void>> = [];
  context.on("response", (response) => {
    if (!response.url().startsWith(stack.gatewayUrl)) return;
    const what = `${response.request().method()} ${response.url()} → ${response.status()}`;
    reading.push(
      (async () => {
        received.push({ what: `${what} (headers)`, text: JSON.stringify(await response.allHeaders()) });
        if (response.status() >= 300 && response.status() < 400) return; // a redirect has no body
        try {
          received.push({ what: `${what} (body)`, text: await response.text() });
        } catch {
          received.push({ what: `${what} (body unreadable)`, text: "" });
        }
      })(),
    );
  });
  return {
    received,
    settle: async () => {
      await Promise.all(reading);
    },
  };
}

const JWT = /eyJ[\w-]*\.eyJ[\w-]*\.[\w-]*/g;

/** The `iss` of every JWT in `text` ("?" for one whose payload is not JSON). */
function jwtIssuers(text: string): string[] {
  return [...text.matchAll(JWT)].map((match) => {
    try {
      const payload = JSON.parse(Buffer.from(match[0].split(".")[1] ?? "", "base64url").toString("utf8"));
      return String((payload as { iss?: unknown }).iss ?? "?");
    } catch {
      return "?";
    }
  });
}

/**
 * Make sure Keycloak posts back-channel logout tokens to this run's gateway. stack.py registered it, but the
 * realm is shared with the e2e suite, whose gateway points the same client at itself when it runs.
 */
async function backchannelToThisGateway(): Promise<void> {
  const found = await keycloakAdmin("GET", "/clients?clientId=gateway");
  expect(found.status).toBe(200);
  const [client] = (await found.json()) as Array<{ id: string; attributes?: Record<string, string> }>;
  if (client === undefined) throw new Error("no client gateway in the realm");
  if (client.attributes?.["backchannel.logout.url"] === sso.backchannelLogoutUrl) return;
  client.attributes = { ...client.attributes, "backchannel.logout.url": sso.backchannelLogoutUrl };
  expect((await keycloakAdmin("PUT", `/clients/${client.id}`, client)).status).toBe(204);
}

/** The gateway's session cookies the browser holds. */
async function sessionCookies(context: BrowserContext): Promise<string[]> {
  const cookies = await context.cookies(`${stack.gatewayUrl}/auth/refresh`);
  return cookies
    .map((cookie) => cookie.name)
    .filter((name) => SESSION_COOKIES.includes(name))
    .sort();
}

/** What the page's JavaScript can read: its cookies, localStorage, sessionStorage and address. */
function readableByScript(page: Page): Promise<string> {
  return page.evaluate(() =>
    JSON.stringify({
      cookie: document.cookie,
      localStorage: { ...localStorage },
      sessionStorage: { ...sessionStorage },
      location: location.href,
    }),
  );
}

test("a clinician signs in at Keycloak, reads a patient, and is signed out by a back-channel logout", async ({
  page,
  context,
  baseURL,
}) => {
  const traffic = gatewayTraffic(context);
  const clinician = sso.clinician;
  const patientRoute = `#/patients/${sso.patient}`;

  await test.step("01 a link to a patient: the sign-in page offers the hospital's sign-in", async () => {
    await page.goto(`/${patientRoute}`);
    await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
    const link = page.getByRole("link", { name: sso.button });
    await expect(link).toBeVisible();
    // A plain navigation to the gateway, which comes back to the patient the link asked for.
    const href = new URL((await link.getAttribute("href")) ?? "");
    expect(`${href.origin}${href.pathname}`).toBe(`${stack.gatewayUrl}/auth/sso/${sso.provider}/login`);
    expect(href.searchParams.get("return_to")).toBe(`/${patientRoute}`);
    await shot(page, "sso-01-sign-in-page");
  });

  await test.step("02 Keycloak's own sign-in page, reached with PKCE (S256)", async () => {
    const authorize = page.waitForRequest((r) =>
      r.url().startsWith(`${realmUrl}/protocol/openid-connect/auth?`),
    );
    const back = page.waitForResponse((r) => r.url().startsWith(`${callbackUrl}?`));
    await signInAtIdp(page, clinician, "sso-02-keycloak-sign-in");
    const request = new URL((await authorize).url());
    expect(request.searchParams.get("client_id")).toBe("gateway");
    expect(request.searchParams.get("redirect_uri")).toBe(callbackUrl);
    expect(request.searchParams.get("response_type")).toBe("code");
    expect(request.searchParams.get("code_challenge_method")).toBe("S256");
    // The gateway's callback sets its session cookies and sends the browser to the patient.
    const callback = await back;
    expect(callback.status()).toBe(303);
    expect(await callback.headerValue("location")).toBe(`${baseURL}/${patientRoute}`);
  });

  await test.step("03 back signed in, on the patient", async () => {
    await expect(page.getByText(`Signed in as ${clinician.displayName}`)).toBeVisible();
    await expect(page.getByRole("heading", { name: new RegExp(`^${stack.family}, `) })).toBeVisible();
    await expect(page.getByRole("region", { name: "Letters" })).toBeVisible();
    expect(new URL(page.url()).hash).toBe(patientRoute);
    // The gateway's own session, as after a password login; the login's binding cookie is gone.
    const cookies = await context.cookies(`${stack.gatewayUrl}/auth/refresh`);
    expect(cookies.map((cookie) => cookie.name).sort()).toEqual(SESSION_COOKIES);
    await shot(page, "sso-03-signed-in-patient");
  });

  await test.step("04 no token at all is readable by the page's JavaScript", async () => {
    const readable = await readableByScript(page);
    expect(readable).toContain("__Host-gw_csrf"); // the one cookie meant for JavaScript
    expect(jwtIssuers(readable)).toEqual([]);
  });

  await test.step("05 Keycloak ends the user's sessions: a back-channel logout", async () => {
    await backchannelToThisGateway();
    const since = new Date(Date.now() - 1_000).toISOString();
    const sessions = await keycloakAdmin("GET", `/users/${clinician.subject}/sessions`);
    expect(sessions.status).toBe(200);
    const list = (await sessions.json()) as Array<{ clients: Record<string, string> }>;
    expect(list.some((session) => Object.values(session.clients).includes("gateway"))).toBe(true);
    expect((await keycloakAdmin("POST", `/users/${clinician.subject}/logout`)).status).toBe(204);
    // Keycloak posts a logout token to the gateway, which ends the session started by that sign-in.
    const admin = await bearer(stack.admin);
    await expect
      .poll(
        async () => {
          const audit = await apiGet<AuditPage>(
            `/admin/audit?action=auth.sso_backchannel_logout&from=${encodeURIComponent(since)}`,
            admin,
          );
          return audit.items.filter((e) => e.actor_user_id === clinician.accountId && e.outcome === "success")
            .length;
        },
        { timeout: 10_000 },
      )
      .toBe(1);
    await page.waitForTimeout(AUTHZ_CACHE_BOUND_MS);
  });

  await test.step("06 the page's next call gets 401 session_ended: the sign-in page", async () => {
    await page.getByRole("link", { name: "Patients" }).click();
    const form = page.getByRole("form", { name: "Find a patient" });
    await form.getByLabel("Family name").fill(stack.family);
    const search = page.waitForResponse(
      (r) => r.url().startsWith(`${stack.gatewayUrl}/patients?`) && r.request().method() === "GET",
    );
    await form.getByRole("button", { name: "Search" }).click();
    const answer = await search;
    expect(answer.status()).toBe(401);
    expect(((await answer.json()) as { code: string }).code).toBe("session_ended");
    await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
    await expect(page.getByRole("status")).toHaveText("Your session has ended. Sign in again.");
    await expect(page.locator("body")).not.toContainText(stack.family);
    await shot(page, "sso-04-signed-out-by-keycloak");
  });

  await test.step("07 no answer of the gateway held a token of Keycloak", async () => {
    await traffic.settle();
    expect(traffic.received.some((r) => r.what.startsWith(`GET ${callbackUrl}?`))).toBe(true);
    // Every body was read (a body the page navigated away from too early would escape the scan).
    expect(traffic.received.filter((r) => r.what.endsWith("(body unreadable)"))).toEqual([]);
    const issuers = traffic.received.flatMap((r) => jwtIssuers(r.text).map((iss) => `${iss} in ${r.what}`));
    // The scan sees Set-Cookie: the gateway's own access token is there (HttpOnly, for the gateway only).
    expect(issuers.some((found) => found.startsWith(`${GATEWAY_ISSUER} in `))).toBe(true);
    expect(issuers.filter((found) => found.includes("/realms/"))).toEqual([]);
    expect(issuers.filter((found) => !found.startsWith(`${GATEWAY_ISSUER} in `))).toEqual([]);
  });
});

test("a Keycloak user with no gateway role comes back to the sign-in page with the no_roles message", async ({
  page,
  context,
  baseURL,
}) => {
  await page.goto("/");
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  const back = page.waitForResponse((r) => r.url().startsWith(`${callbackUrl}?`));
  await signInAtIdp(page, sso.noRoles);
  const callback = await back;
  expect(callback.status()).toBe(303);
  expect(await callback.headerValue("location")).toBe(`${baseURL}/?sso_error=no_roles`);

  const alert = page.getByRole("alert");
  await expect(alert).toHaveAttribute("data-code", "no_roles");
  await expect(alert).toContainText("Single sign-on failed");
  await expect(alert).toContainText("You have no role for this application. Ask your access manager.");
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  await expect(page.getByRole("link", { name: sso.button })).toBeVisible();
  // The code left the address bar (a reload shows the plain sign-in page); no session was started (the
  // login's binding cookie may stay until it expires: a forged callback must not break a login in flight).
  expect(new URL(page.url()).search).toBe("");
  expect(await sessionCookies(context)).toEqual([]);
  await shot(page, "sso-05-no-roles");

  await page.reload();
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  await expect(page.getByRole("alert")).toHaveCount(0);
});

test("signing out of an SSO session ends the Keycloak session too", async ({ page, context, baseURL }) => {
  const traffic = gatewayTraffic(context);
  await page.goto("/");
  await signInAtIdp(page, sso.clinician);
  await expect(page.getByText(`Signed in as ${sso.clinician.displayName}`)).toBeVisible();
  await expect(page.getByRole("heading", { name: "Patients" })).toBeVisible();

  // The page leaves for Keycloak as soon as this answer arrives, too early to read its body from the
  // browser: take it on its way (the request and the answer themselves are unchanged).
  let logoutBody = "";
  await page.route(`${stack.gatewayUrl}/auth/sso/logout`, async (route) => {
    const response = await route.fetch();
    logoutBody = await response.text();
    await route.fulfill({ response });
  });
  const logout = page.waitForResponse((r) => r.url() === `${stack.gatewayUrl}/auth/sso/logout`);
  const endSession = page.waitForRequest((r) =>
    r.url().startsWith(`${realmUrl}/protocol/openid-connect/logout?`),
  );
  await page.getByRole("button", { name: "Log out" }).click();
  expect((await logout).status()).toBe(200);
  const ended = new URL((await endSession).url());
  expect(ended.searchParams.get("client_id")).toBe("gateway");
  expect(ended.searchParams.get("post_logout_redirect_uri")).toBe(`${baseURL}/`);

  // Keycloak ends its session and sends the browser back to the client's sign-in page.
  await page.waitForURL(`${baseURL}/#/login`);
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  expect(await context.cookies(stack.gatewayUrl)).toEqual([]);
  await shot(page, "sso-06-signed-out-of-keycloak-too");
  // Back on the client after the whole logout: nothing of Keycloak's is visible to its scripts (the
  // performance entries list every URL this page loaded).
  const visible = await page.evaluate(() =>
    JSON.stringify({
      cookie: document.cookie,
      local: { ...localStorage },
      session: { ...sessionStorage },
      href: location.href,
      entries: performance.getEntries().map((entry) => entry.name),
    }),
  );
  expect(jwtIssuers(visible)).toEqual([]);

  // Signing in again asks for the password again at Keycloak (its session is gone).
  await page.getByRole("link", { name: sso.button }).click();
  await page.waitForURL(`${realmUrl}/**`);
  await expect(page.locator("#kc-login")).toBeVisible();
  await expect(page.locator("#username")).toBeEditable();
  await shot(page, "sso-07-keycloak-asks-again");

  // The logout answer handed the page a link of the gateway's, with no token in it. Keycloak's ID token
  // (id_token_hint) travelled in one place only: the Location of that link's 303, a top-level navigation
  // that no page script can read. Nothing else the gateway sent carries a token of Keycloak's.
  await traffic.settle();
  const continueRedirect = (r: Received) => r.what.startsWith(`GET ${stack.gatewayUrl}/auth/sso/logout/continue?`);
  expect(traffic.received.filter(continueRedirect).flatMap((r) => jwtIssuers(r.text))).toEqual([
    `${realmUrl}`,
  ]);
  const received = [
    ...traffic.received.filter((r) => !continueRedirect(r)),
    { what: "POST /auth/sso/logout (body)", text: logoutBody },
  ];
  const issuers = received.flatMap((r) => jwtIssuers(r.text).map((iss) => `${iss} in ${r.what}`));
  expect(issuers.filter((found) => found.includes("/realms/"))).toEqual([]);
});
