/** Tiny DOM helpers. Text is always set as text (never as HTML), so patient data cannot inject markup. */

type Child = Node | string | null | undefined | false;
type Attributes = Record<string, string | boolean | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === true) element.setAttribute(name, "");
    else if (typeof value === "string") element.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return element;
}

let fields = 0;

/** A labelled form field (the label names the control, so screen readers and tests find it). */
export function field(
  label: string,
  control: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement,
): HTMLElement {
  fields += 1;
  const id = `f-${control.name}-${fields}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

export function input(name: string, attributes: Attributes = {}): HTMLInputElement {
  return h("input", { name, ...attributes });
}

export function select(name: string, options: Array<[string, string]>, selected?: string): HTMLSelectElement {
  const element = h("select", { name });
  for (const [value, text] of options) {
    element.append(h("option", { value, selected: value === selected }, text));
  }
  return element;
}

/** The value of a named form field. */
export function valueOf(form: HTMLFormElement, name: string): string {
  const control = form.elements.namedItem(name);
  if (
    control instanceof HTMLInputElement ||
    control instanceof HTMLSelectElement ||
    control instanceof HTMLTextAreaElement
  ) {
    return control.value.trim();
  }
  throw new Error(`the form has no field ${name}`);
}
