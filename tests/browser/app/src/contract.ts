/**
 * Compile-time checks of the generated types (`tsc` fails when one breaks): every answer body of every
 * route is typed (none is `unknown`), every request body is typed, and every error body is the gateway's
 * `Problem`. Not part of the bundle; `npm run typecheck` (run by `just browser`) checks it.
 */
import type { ErrorResponse, SuccessResponse } from "openapi-typescript-helpers";
import type { components, paths } from "./api";

type Problem = components["schemas"]["Problem"];
type Method = "get" | "put" | "post" | "patch" | "delete";
/**
 * Readiness answers 503 with its own report of the stores, and back-channel logout answers its identity
 * provider's 400 in the shape OpenID Connect prescribes: neither is a problem document.
 */
type ReadinessPath = "/ready" | "/auth/sso/{provider_id}/backchannel-logout";
/** The FHIR face answers its errors as FHIR OperationOutcomes (docs/fhir.md), checked apart below. */
type FhirPath = Extract<keyof paths, `/fhir/${string}`>;
type OperationOutcome = components["schemas"]["OperationOutcomeBody"];

type OperationsOf<P extends keyof paths> = P extends unknown
  ? { [M in Method]: NonNullable<paths[P][M]> }[Method]
  : never;
type Operation = OperationsOf<keyof paths>;
type Responses<O> = O extends { responses: infer R extends Record<string | number, unknown> } ? R : never;
type SuccessBodies<O> = O extends unknown ? SuccessResponse<Responses<O>> : never;
type ErrorBodies<O> = O extends unknown ? ErrorResponse<Responses<O>> : never;
type ContentOf<B> = B extends { content: infer C } ? C[keyof C] : never;
type RequestBodies<O> = O extends unknown
  ? ContentOf<NonNullable<O extends { requestBody?: infer B } ? B : never>>
  : never;

type Assert<T extends true> = T;
type IsUnknown<T> = unknown extends T ? true : false;

export type EveryAnswerIsTyped = Assert<IsUnknown<SuccessBodies<Operation>> extends false ? true : false>;
export type EveryRequestBodyIsTyped = Assert<
  IsUnknown<RequestBodies<Operation>> extends false ? true : false
>;
export type ErrorsAreNotUntyped = Assert<IsUnknown<ErrorBodies<Operation>> extends false ? true : false>;
export type EveryErrorIsAProblem = Assert<
  [ErrorBodies<OperationsOf<Exclude<keyof paths, ReadinessPath | FhirPath>>>] extends [Problem] ? true : false
>;
export type EveryFhirErrorIsAnOperationOutcome = Assert<
  [ErrorBodies<OperationsOf<FhirPath>>] extends [OperationOutcome] ? true : false
>;
