/**
 * After sign-out, nothing of a patient comes back from the browser's cache: the gateway answers every
 * request with Cache-Control: no-store, so going back to a patient's JSON asks the gateway again (401).
 */
import { expect, test } from "@playwright/test";
import { shot, signIn, stack } from "./support";

test("after sign-out the back button shows no patient data from the cache", async ({ page, context }) => {
  const patient = stack.davePatients[2] as string;
  await signIn(page, stack.dave);
  await page.goto(`/#/patients/${patient}`);
  await expect(page.getByRole("heading", { name: new RegExp(stack.family) })).toBeVisible();

  // A second tab opens the patient's JSON from the gateway itself (a top-level navigation).
  const raw = await context.newPage();
  const first = await raw.goto(`${stack.gatewayUrl}/patients/${patient}`);
  expect(first?.status()).toBe(200);
  expect(await first?.headerValue("cache-control")).toBe("no-store");
  await expect(raw.locator("body")).toContainText(stack.family);
  await raw.goto("/");
  await expect(raw.getByText("Signed in as Dr Dave Browser")).toBeVisible();

  await page.getByRole("button", { name: "Log out" }).click();
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();

  const back = await raw.goBack();
  expect(back?.status()).toBe(401);
  await expect(raw.locator("body")).toContainText("not_authenticated");
  await expect(raw.locator("body")).not.toContainText(stack.family);
  await shot(raw, "40-back-to-patient-json-after-sign-out");

  await page.goBack();
  await expect(page.getByRole("heading", { name: "Sign in" })).toBeVisible();
  await expect(page.locator("body")).not.toContainText(stack.family);
});
