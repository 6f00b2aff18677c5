/** What the specs share: the stack's state (written by stack.py), TOTP codes, screenshots, sign-in. */
import { createHmac } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect, type BrowserContext, type Page } from "@playwright/test";

const here = dirname(fileURLToPath(import.meta.url));
const varDir = join(here, "..", "..", "..", "var", "browser");
export const screenshotDir = join(varDir, "screenshots");

export interface Account {
  username: string;
  password: string;
}

export interface Stack {
  gatewayUrl: string;
  runId: string;
  family: string;
  carol: Account & { totpSecret: string; totpStep: number };
  dave: Account;
  admin: Account;
  davePatients: string[];
  newNhsNumber: string;
  sso: SsoStack;
}

/** A user of Keycloak's realm file, linked to an SSO-only account of the gateway (stack.py). */
export interface SsoUser extends Account {
  /** The Keycloak user id: the `sub` of its tokens, linked to the gateway account. */
  subject: string;
  /** The gateway account's username, id and display name. */
  account: string;
  accountId: string;
  displayName: string;
}

/** Single sign-on: the gateway's provider `hospital`, the Keycloak realm behind it, and its users. */
export interface SsoStack {
  provider: string;
  /** The provider's display name: the text of the sign-in page's link. */
  button: string;
  realm: string;
  keycloakUrl: string;
  /** The master realm's administrator, for the specs' own calls to Keycloak's admin API. */
  keycloakAdmin: Account;
  /** Where Keycloak posts back-channel logout tokens for this run's gateway. */
  backchannelLogoutUrl: string;
  /** A patient the SSO clinician has a care-team link to. */
  patient: string;
  /** `dr.sso`: realm role gateway-clinician, maps to the gateway's clinician. */
  clinician: SsoUser;
  /** `nurse.noroles`: no realm role the gateway maps. */
  noRoles: SsoUser;
}

export const stack: Stack = JSON.parse(readFileSync(join(varDir, "stack.json"), "utf8")) as Stack;
/** The gateway for calls made by the specs themselves (not by the browser). */
export const gatewayForNode = stack.gatewayUrl.replace("//localhost:", "//127.0.0.1:");
export const thirdPort = process.env.BROWSER_THIRD_PORT ?? "25503";

/** Save a screenshot as var/browser/screenshots/<name>.png for a person to look at. */
export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: join(screenshotDir, `${name}.png`), fullPage: true });
}

function base32(secret: string): Buffer {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const char of secret.replace(/=+$/, "").toUpperCase()) {
    const index = alphabet.indexOf(char);
    if (index < 0) throw new Error("not a base32 secret");
    bits += index.toString(2).padStart(5, "0");
  }
  const bytes: number[] = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

/** The RFC 6238 code (SHA-1, 6 digits, 30-second steps) of `secret` for time step `step`. */
export function totpCode(secret: string, step: number): string {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const digest = createHmac("sha1", base32(secret)).update(counter).digest();
  const offset = (digest.at(-1) ?? 0) & 0x0f;
  return ((digest.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).toString().padStart(6, "0");
}

/**
 * A code the gateway accepts now: the current step's, or the next one's (one step either side is valid)
 * when the current step was already used to confirm the enrolment (a step is never accepted twice).
 */
export function freshTotpCode(): string {
  const step = Math.max(Math.floor(Date.now() / 30_000), stack.carol.totpStep + 1);
  return totpCode(stack.carol.totpSecret, step);
}

/** Sign in through the login form (no second factor). */
export async function signIn(page: Page, account: Account): Promise<void> {
  await page.goto("/");
  await page.getByLabel("Username").fill(account.username);
  await page.getByLabel("Password").fill(account.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Patients" })).toBeVisible();
}

/** One answer of the gateway as the browser received it. */
export interface SeenAnswer {
  method: string;
  url: string;
  status: number;
  cacheControl: string | undefined;
}

/** Every answer of the gateway seen by the pages of `context`, recorded as it arrives. */
export function gatewayAnswers(context: BrowserContext): SeenAnswer[] {
  const seen: SeenAnswer[] = [];
  context.on("response", (response) => {
    if (!response.url().startsWith(stack.gatewayUrl)) return;
    const method = response.request().method();
    seen.push({
      method,
      url: response.url(),
      status: response.status(),
      cacheControl: response.headers()["cache-control"],
    });
  });
  return seen;
}

/** A bearer token for `account`, for checks the specs make through the API themselves. */
export async function bearer(account: Account): Promise<string> {
  const response = await fetch(`${gatewayForNode}/auth/token`, {
    method: "POST",
    body: new URLSearchParams({ username: account.username, password: account.password }),
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { access_token: string }).access_token;
}

/** GET a gateway path with a bearer token and return the JSON body. */
export async function apiGet<T>(path: string, token: string): Promise<T> {
  const response = await fetch(`${gatewayForNode}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  expect(response.status, `${path}: ${response.status}`).toBe(200);
  return (await response.json()) as T;
}

/**
 * Sign in through the identity provider, from the sign-in page: the "Sign in with the hospital" link, then
 * Keycloak's own login form (`#username`, `#password`, `#kc-login`). `screenshot` names a shot of
 * Keycloak's page. Returns once the form is submitted; Keycloak then sends the browser back to the gateway.
 */
export async function signInAtIdp(page: Page, user: Account, screenshot?: string): Promise<void> {
  await page.getByRole("link", { name: stack.sso.button }).click();
  await page.waitForURL(`${stack.sso.keycloakUrl}/realms/${stack.sso.realm}/**`);
  await expect(page.locator("#kc-login")).toBeVisible();
  if (screenshot) await shot(page, screenshot);
  await page.locator("#username").fill(user.username);
  await page.locator("#password").fill(user.password);
  await page.locator("#kc-login").click();
}

/** One call to Keycloak's admin REST API (`/admin/realms/<realm><path>`) as the master realm's admin. */
export async function keycloakAdmin(method: string, path: string, body?: unknown): Promise<Response> {
  const { keycloakUrl, keycloakAdmin: admin, realm } = stack.sso;
  const token = await fetch(`${keycloakUrl}/realms/master/protocol/openid-connect/token`, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: "password",
      client_id: "admin-cli",
      username: admin.username,
      password: admin.password,
    }),
  });
  expect(token.status, "Keycloak admin token").toBe(200);
  const { access_token } = (await token.json()) as { access_token: string };
  const headers: Record<string, string> = { Authorization: `Bearer ${access_token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(`${keycloakUrl}/admin/realms/${realm}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}
