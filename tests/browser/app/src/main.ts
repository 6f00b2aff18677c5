/**
 * The reference web client: the smallest frontend that uses every part of the gateway's browser contract
 * (cookie login with TOTP, single sign-on through the hospital's identity provider, CSRF, several tabs,
 * paging cursors, ETag/If-Match, Idempotency-Key, problem errors). Plain TypeScript and the DOM; hash
 * routes so that the back button works. See docs/frontend.md and docs/sso.md.
 */
import { h, field, input, select, valueOf } from "./dom";
import {
  ApiProblem,
  Gateway,
  type Letter,
  type LetterWrite,
  type Me,
  type Patient,
  type PatientPage,
  type Schemas,
  type SsoProvider,
  networkProblem,
  ssoLoginUrl,
} from "./gateway";

const NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number";

interface Config {
  gatewayUrl: string;
}

let gateway: Gateway;
let me: Me | null = null;
/** The route a signed-out visit asked for: where signing in leads (after the identity provider, too). */
let wanted = "/";
/** The `sso_error` the gateway sent the browser back with, shown once on the sign-in page. */
let ssoError: string | null = null;
/** The identity providers of the gateway (`GET /auth/sso/providers`), fetched once. */
let providers: SsoProvider[] | null = null;
const root = (): HTMLElement => document.getElementById("app") as HTMLElement;

// ---------------------------------------------------------------------------------------------- shell

function go(hash: string): void {
  if (location.hash === hash) void route();
  else location.hash = hash;
}

function show(...children: Array<Node | null>): void {
  const header = me
    ? h(
        "header",
        {},
        h("span", { class: "who" }, `Signed in as ${me.display_name}`),
        h("a", { href: "#/" }, "Patients"),
        button("Log out", () => void logOut()),
      )
    : null;
  root().replaceChildren(
    ...[header, h("main", {}, ...children.filter((c): c is Node => c !== null))].filter(
      (c): c is HTMLElement => c !== null,
    ),
  );
}

function button(
  text: string,
  onClick: () => void,
  attributes: Record<string, string> = {},
): HTMLButtonElement {
  const element = h("button", { type: "button", ...attributes }, text);
  element.addEventListener("click", onClick);
  return element;
}

function notice(text: string): HTMLElement {
  return h("p", { class: "notice", role: "status" }, text);
}

/** An error banner: the problem's title, code, detail, field errors and request id (for support). */
function problemBanner(error: unknown): HTMLElement {
  const problem = error instanceof ApiProblem ? error.problem : networkProblem().problem;
  return h(
    "div",
    { class: "problem", role: "alert", "data-code": problem.code },
    h("strong", {}, problem.title),
    ` (${problem.code})`,
    problem.detail ? h("p", {}, problem.detail) : null,
    problem.errors?.length
      ? h("ul", {}, ...problem.errors.map((e) => h("li", {}, `${e.loc.join(".")}: ${e.msg}`)))
      : null,
    problem.current_version ? h("p", {}, `Current version: ${problem.current_version}`) : null,
    problem.request_id ? h("p", { class: "request-id" }, `Request id: ${problem.request_id}`) : null,
  );
}

/** Run an action; a problem is shown in `slot`. Signed-out sessions go back to the login page. */
async function attempt(slot: HTMLElement, action: () => Promise<void>): Promise<void> {
  slot.replaceChildren();
  try {
    await action();
  } catch (error) {
    if (
      error instanceof ApiProblem &&
      error.status === 401 &&
      error.code !== "totp_required" &&
      error.code !== "invalid_totp_code" &&
      error.code !== "invalid_credentials"
    ) {
      // session_ended: signed out elsewhere, by an administrator, or by the identity provider
      // (back-channel logout); the other 401s mean there is no session at all.
      signedOut(error.code === "session_ended" ? "Your session has ended. Sign in again." : null);
      return;
    }
    slot.replaceChildren(problemBanner(error));
    if (!(error instanceof ApiProblem)) console.error(error);
  }
}

function signedOut(message: string | null = null): void {
  me = null;
  wanted = "/"; // whoever signs in next starts on the home page
  flash = message; // shown by the sign-in page
  root().replaceChildren(); // nothing of the last patient stays in the page
  location.replace("#/login");
}

async function logOut(): Promise<void> {
  let endSession: string | null = null;
  try {
    endSession = await gateway.logout();
  } finally {
    signedOut();
  }
  // A session started at the identity provider: end the provider's session too. Its logout page sends the
  // browser back to FRONTEND_URL/ (the post-logout redirect), where this client shows the sign-in page.
  if (endSession !== null) location.assign(endSession);
}

// ---------------------------------------------------------------------------------------------- login

/** What to tell the user for each `sso_error` of docs/sso.md ("Errors"). */
const SSO_ERRORS: Record<string, string> = {
  account_not_linked:
    "Your hospital account is not linked to an account of this application. Ask an administrator to link it.",
  no_roles: "You have no role for this application. Ask your access manager.",
  account_disabled: "Your account of this application is disabled. Ask an administrator.",
  identity_taken: "This hospital account is already linked to another account of this application.",
  idp_error: "The sign-in at the identity provider did not finish. Try again.",
  idp_unavailable:
    "The identity provider cannot be reached. Try again later, or sign in with a local account.",
};
/** The callback was not one this browser started, was used already, or came back incomplete. */
const START_AGAIN = new Set([
  "invalid_state",
  "state_replayed",
  "state_expired",
  "browser_mismatch",
  "issuer_mismatch",
  "invalid_request",
  "code_rejected",
]);

/** Every other code: the ID token or UserInfo failed a check (the audit trail has the detail). */
const FAILED_CHECK =
  "The identity provider's answer failed a security check. Contact support with the time of this attempt.";

function ssoErrorBanner(code: string): HTMLElement {
  const message =
    SSO_ERRORS[code] ??
    (START_AGAIN.has(code) ? "This sign-in could not be completed. Start again." : FAILED_CHECK);
  return h(
    "div",
    { class: "problem", role: "alert", "data-code": code },
    h("strong", {}, "Single sign-on failed"),
    ` (${code})`,
    h("p", {}, message),
  );
}

async function ssoProviders(): Promise<SsoProvider[]> {
  if (providers === null) {
    try {
      providers = await gateway.ssoProviders();
    } catch (error) {
      console.error(error); // the password form still works
      return [];
    }
  }
  return providers;
}

/**
 * "Sign in with …" for each identity provider: plain links (a navigation, not a fetch) to the gateway,
 * which sends the browser to the provider's own sign-in page and back to `wanted` on this client.
 */
function ssoLinks(): HTMLElement {
  const section = h("section", { "aria-label": "Single sign-on", hidden: true });
  void ssoProviders().then((list) => {
    if (list.length === 0) return;
    section.replaceChildren(
      h("p", {}, "Or use your organisation's account:"),
      ...list.map((provider) =>
        h(
          "p",
          {},
          h(
            "a",
            { href: ssoLoginUrl(provider, `/#${wanted}`), "data-provider": provider.id },
            provider.display_name,
          ),
        ),
      ),
    );
    section.hidden = false;
  });
  return section;
}

function loginPage(): void {
  const failed = ssoError !== null ? ssoErrorBanner(ssoError) : null;
  ssoError = null; // once: a reload shows the plain sign-in page
  const slot = h("div", {}, takeFlash());
  const totp = field(
    "Authenticator code",
    input("totp", { inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}" }),
  );
  totp.hidden = true;
  const form = h(
    "form",
    { "aria-label": "Sign in" },
    h("h1", {}, "Sign in"),
    field("Username", input("username", { autocomplete: "username", required: true })),
    field(
      "Password",
      input("password", { type: "password", autocomplete: "current-password", required: true }),
    ),
    totp,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    failed?.remove();
    void attempt(slot, async () => {
      try {
        me = await gateway.login(
          valueOf(form, "username"),
          valueOf(form, "password"),
          valueOf(form, "totp") || undefined,
        );
      } catch (error) {
        if (error instanceof ApiProblem && error.code === "totp_required") {
          totp.hidden = false;
          slot.replaceChildren(
            notice("This account uses two-factor authentication: enter the code from your app."),
          );
          (totp.querySelector("input") as HTMLInputElement).focus();
          return;
        }
        throw error;
      }
      const next = wanted;
      wanted = "/";
      go(`#${next}`);
    });
  });
  show(failed, form, slot, ssoLinks());
}

// ---------------------------------------------------------------------------------------------- patients

function nameOf(names: Schemas["HumanName"][] | null | undefined): string {
  const name = names?.[0];
  if (!name) return "(no name)";
  return [name.family ?? "", (name.given ?? []).join(" ")].filter(Boolean).join(", ");
}

function nhsOf(identifiers: Schemas["Identifier"][] | null | undefined): string {
  return identifiers?.find((i) => i.system === NHS_NUMBER)?.value ?? "";
}

function homePage(): void {
  const results = h("section", { "aria-label": "Search results" });
  const slot = h("div");
  const search = h(
    "form",
    { "aria-label": "Find a patient" },
    h("h2", {}, "Find a patient"),
    field("Family name", input("family", { required: true })),
    field(
      "Per page",
      select(
        "count",
        [
          ["2", "2"],
          ["10", "10"],
          ["20", "20"],
        ],
        "10",
      ),
    ),
    h("button", { type: "submit" }, "Search"),
  );
  const showPage = (page: PatientPage, number: number): void => {
    const rows = page.items.map((p) =>
      h(
        "li",
        {},
        h("a", { href: `#/patients/${encodeURIComponent(p.id)}` }, nameOf(p.name)),
        ` born ${p.birthDate ?? "?"}, NHS ${nhsOf(p.identifier)}`,
      ),
    );
    const next = page.next
      ? button(
          "Next page",
          () =>
            void attempt(slot, async () =>
              showPage(await gateway.searchPatients({ cursor: page.next as string }), number + 1),
            ),
        )
      : null;
    const total = page.total !== null && page.total !== undefined ? ` (${page.total} patients in all)` : "";
    results.replaceChildren(h("h3", {}, `Page ${number}${total}`), h("ul", {}, ...rows), next ?? "");
  };
  search.addEventListener("submit", (event) => {
    event.preventDefault();
    void attempt(slot, async () =>
      showPage(
        await gateway.searchPatients({
          family: valueOf(search, "family"),
          limit: Number(valueOf(search, "count")),
        }),
        1,
      ),
    );
  });

  const register = h(
    "form",
    { "aria-label": "Register a patient" },
    h("h2", {}, "Register a patient"),
    field("Family name", input("family", { required: true })),
    field("Given name", input("given", { required: true })),
    field("Birth date", input("birthDate", { type: "date", required: true })),
    field(
      "Gender",
      select("gender", [
        ["female", "female"],
        ["male", "male"],
        ["other", "other"],
        ["unknown", "unknown"],
      ]),
    ),
    field("NHS number", input("nhs", { required: true, pattern: "[0-9]{10}" })),
    h("button", { type: "submit" }, "Register"),
  );
  register.addEventListener("submit", (event) => {
    event.preventDefault();
    void attempt(slot, async () => {
      const patient: Patient = {
        resourceType: "Patient",
        identifier: [{ system: NHS_NUMBER, value: valueOf(register, "nhs") }],
        name: [{ use: "official", family: valueOf(register, "family"), given: [valueOf(register, "given")] }],
        gender: valueOf(register, "gender") as Patient["gender"],
        birthDate: valueOf(register, "birthDate"),
      };
      const registered = await gateway.registerPatient(patient);
      flash = registered.created ? "Patient registered." : "This patient was already registered.";
      go(`#${registered.location}`); // Location: /patients/{id}
    });
  });
  show(h("h1", {}, "Patients"), slot, search, results, register);
}

/** A message for the next page shown (after a navigation). */
let flash: string | null = null;

function takeFlash(): HTMLElement | null {
  const message = flash;
  flash = null;
  return message ? notice(message) : null;
}

async function patientPage(patientId: string): Promise<void> {
  const slot = h("div");
  const message = takeFlash();
  show(h("p", {}, "Loading…"));
  await attempt(slot, async () => {
    const patient = await gateway.readPatient(patientId);
    const letters = h("section", { "aria-label": "Letters" }, h("h2", {}, "Letters"));
    const list = h("ul", { class: "letters" });
    letters.append(list);
    const more = h("div");
    letters.append(more);
    const loadLetters = async (cursor?: string): Promise<void> => {
      const page = await gateway.listLetters(patientId, cursor, 10);
      if (!cursor) list.replaceChildren();
      for (const letter of page.items) {
        list.append(
          h(
            "li",
            {},
            h(
              "a",
              {
                href: `#/patients/${encodeURIComponent(patientId)}/letters/${encodeURIComponent(letter.id)}`,
              },
              letter.title,
            ),
            ` — ${letter.status}, ${letter.author.name}, ${letter.date}`,
          ),
        );
      }
      more.replaceChildren(
        page.next
          ? button("Older letters", () => void attempt(slot, () => loadLetters(page.next as string)))
          : "",
      );
    };
    await loadLetters();
    show(
      message,
      h("h1", {}, nameOf(patient.value.name)),
      h(
        "dl",
        {},
        h("dt", {}, "Born"),
        h("dd", {}, patient.value.birthDate ?? "?"),
        h("dt", {}, "NHS number"),
        h("dd", {}, nhsOf(patient.value.identifier)),
        h("dt", {}, "Version"),
        h("dd", { "data-test": "patient-etag" }, patient.etag),
      ),
      slot,
      letters,
      writeForm(patientId, slot, () => loadLetters()),
    );
  });
  if (slot.childElementCount && !root().contains(slot)) show(slot);
}

function letterFields(letter?: Letter): HTMLElement[] {
  const text = h("textarea", { name: "body", rows: "6", required: true });
  text.value = letter?.body ?? "";
  const title = input("title", { required: true });
  title.value = letter?.title ?? "";
  return [
    field("Title", title),
    field("Text", text),
    field(
      "Status",
      select(
        "status",
        [
          ["draft", "draft"],
          ["final", "final"],
        ],
        letter?.status ?? "draft",
      ),
    ),
  ];
}

function letterFrom(form: HTMLFormElement): LetterWrite {
  return {
    title: valueOf(form, "title"),
    body: valueOf(form, "body"),
    status: valueOf(form, "status") as LetterWrite["status"],
  };
}

/** The write form. A lost answer (network error, 5xx) keeps the Idempotency-Key: "Retry" cannot write twice. */
function writeForm(patientId: string, slot: HTMLElement, written: () => Promise<void>): HTMLElement {
  const form = h(
    "form",
    { "aria-label": "Write a letter" },
    h("h2", {}, "Write a letter"),
    ...letterFields(),
    h("button", { type: "submit" }, "Save letter"),
  );
  let pending: { key: string; letter: LetterWrite } | null = null;
  const save = async (): Promise<void> => {
    if (pending === null) return;
    const { key, letter } = pending;
    try {
      const saved = await gateway.writeLetter(patientId, letter, key);
      pending = null;
      form.reset();
      const again = saved.replayed ? " It had reached the gateway before: it was not written twice." : "";
      slot.replaceChildren(notice(`Letter saved (version ${saved.etag}).${again}`));
      await written();
    } catch (error) {
      const unsure =
        !(error instanceof ApiProblem) ||
        error.status === 0 ||
        error.status >= 500 ||
        error.code === "idempotency_in_progress";
      if (!unsure) pending = null;
      slot.replaceChildren(
        problemBanner(error),
        unsure
          ? h(
              "p",
              {},
              "It is not known whether the letter was saved. ",
              button("Retry", () => void save()),
            )
          : "",
      );
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    pending = { key: crypto.randomUUID(), letter: letterFrom(form) };
    void save();
  });
  return form;
}

async function letterPage(patientId: string, letterId: string): Promise<void> {
  const slot = h("div");
  show(h("p", {}, "Loading…"));
  await attempt(slot, async () => {
    const letter = await gateway.readLetter(patientId, letterId);
    const reason = field("Reason for amending", input("reason"));
    const form = h(
      "form",
      { "aria-label": "Amend the letter" },
      h("h2", {}, "Amend"),
      ...letterFields(letter.value),
      reason,
      h("button", { type: "submit" }, "Save new version"),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void attempt(slot, async () => {
        const amended = await gateway.amendLetter(
          patientId,
          letterId,
          { ...letterFrom(form), reason: valueOf(form, "reason") || null },
          letter.etag,
        );
        flash = `Saved version ${amended.etag}.`;
        await letterPage(patientId, letterId);
      });
    });
    show(
      takeFlash(),
      h("p", {}, h("a", { href: `#/patients/${encodeURIComponent(patientId)}` }, "Back to the patient")),
      h(
        "article",
        { "aria-label": "Letter" },
        h("h1", {}, letter.value.title),
        h(
          "p",
          { class: "meta" },
          `${letter.value.status} — ${letter.value.author.name}, ${letter.value.date}`,
        ),
        h("pre", { class: "body" }, letter.value.body),
        h("p", { class: "meta" }, "Version ", h("code", { "data-test": "letter-etag" }, letter.etag)),
      ),
      slot,
      form,
    );
  });
  if (slot.childElementCount && !root().contains(slot)) show(slot);
}

// ---------------------------------------------------------------------------------------------- routing

async function route(): Promise<void> {
  const path = location.hash.replace(/^#/, "") || "/";
  if (path === "/login" || me === null) {
    if (me !== null) return go("#/");
    if (path !== "/login") {
      wanted = path; // come back here once signed in
      return location.replace("#/login");
    }
    return loginPage();
  }
  const letter = /^\/patients\/([^/]+)\/letters\/([^/]+)$/.exec(path);
  if (letter)
    return letterPage(decodeURIComponent(letter[1] as string), decodeURIComponent(letter[2] as string));
  const patient = /^\/patients\/([^/]+)$/.exec(path);
  if (patient) return patientPage(decodeURIComponent(patient[1] as string));
  return homePage();
}

async function start(): Promise<void> {
  const config = (await (await fetch("config.json")).json()) as Config;
  gateway = new Gateway(config.gatewayUrl);
  // A failed single sign-on comes back as FRONTEND_URL/?sso_error=<code>: keep the code for the sign-in
  // page and take it out of the address bar. Only a code's shape is shown, never other text from the URL.
  const code = new URLSearchParams(location.search).get("sso_error");
  if (code !== null) {
    ssoError = /^[a-z_]{1,40}$/.test(code) ? code : "sso_failed";
    history.replaceState(null, "", location.pathname + location.hash);
  }
  // For the browser suite: lets a spec make this tab refresh at a given moment.
  (window as unknown as { referenceClient: { gateway: Gateway } }).referenceClient = { gateway };
  try {
    me = await gateway.restore();
  } catch (error) {
    root().replaceChildren(problemBanner(error));
    return;
  }
  window.addEventListener("hashchange", () => void route());
  await route();
  document.body.dataset.ready = "true";
}

void start();
