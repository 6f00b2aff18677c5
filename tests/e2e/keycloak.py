"""Keycloak in the end-to-end and browser suites: its admin REST API, a browser-like cookie jar, a sign-in.

``tests/e2e/infra/up.sh`` starts Keycloak (realms ``hospital`` and ``clinic``, from
``tests/e2e/infra/keycloak/*-realm.json``) and exports ``E2E_KEYCLOAK_URL``, ``E2E_KEYCLOAK_ADMIN_USER`` and
``E2E_KEYCLOAK_ADMIN_PASSWORD``. This module gives the suites:

- :class:`KeycloakAdmin`: what a test changes in Keycloak while it runs (the gateway's back-channel logout
  URL, a user's roles, a disabled user, a new signing key, a server-side logout, a wrong ``aud``), through
  the admin REST API as the master realm's bootstrap administrator;
- :func:`browser_client`: a sync ``httpx.Client`` that keeps cookies like a browser on a loopback address.
  Keycloak marks its cookies ``Secure`` even over plain http, and the gateway's ``__Host-`` cookies are
  ``Secure`` too; :mod:`http.cookiejar` stores such cookies but never returns them over http, which would
  lose both the IdP's login state and the gateway's session. :class:`LoopbackSecureCookiePolicy` treats
  http on 127.0.0.1/localhost as secure, as browsers do (a "potentially trustworthy origin");
- :func:`idp_login`: a user signing in at Keycloak's login page, up to the redirect back to the relying party.
"""

from __future__ import annotations

import http.cookiejar
import os
import time
import urllib.request
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import lxml.html

#: Hosts whose plain-http origins count as secure for cookies (browsers treat loopback the same way).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Keycloak's component type of signing/encryption key providers.
KEY_PROVIDER_TYPE = "org.keycloak.keys.KeyProvider"
#: Redirects followed inside Keycloak before :func:`idp_login` gives up.
_MAX_HOPS = 10
#: An origin: scheme, host, port.
Origin = tuple[str, str, int | None]


class LoopbackSecureCookiePolicy(http.cookiejar.DefaultCookiePolicy):
    """The default cookie policy, except that ``Secure`` cookies are also returned over http to loopback."""

    def return_ok_secure(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        """Allow a secure cookie on a request to a loopback host, whatever its scheme.

        Args:
            cookie: The stored cookie.
            request: The request the cookie jar is asked about (httpx wraps its own request in one).

        Returns:
            Whether the cookie may go with the request, as far as its ``Secure`` attribute is concerned.
        """
        if cookie.secure and urlsplit(request.get_full_url()).hostname in LOOPBACK_HOSTS:
            return True
        return super().return_ok_secure(cookie, request)


def loopback_cookie_jar() -> http.cookiejar.CookieJar:
    """An empty cookie jar with :class:`LoopbackSecureCookiePolicy`.

    Returns:
        The jar :func:`browser_client` uses (given to ``httpx.Client(cookies=...)`` alone it is not enough:
        see there).
    """
    return http.cookiejar.CookieJar(policy=LoopbackSecureCookiePolicy())


def browser_client(**kwargs: Any) -> httpx.Client:
    """A sync HTTP client that keeps cookies like a browser on 127.0.0.1, and does not follow redirects.

    Its jar has :class:`LoopbackSecureCookiePolicy`. Passing the jar as ``httpx.Client(cookies=...)`` is not
    enough: httpx (0.28) stores response cookies in that jar, but builds each request's ``Cookie`` header
    from a copy of it in a jar with the default policy, which leaves the secure cookies out. A request hook
    therefore rebuilds the header from the jar itself (it also runs for redirects httpx follows).

    Args:
        **kwargs: More ``httpx.Client`` arguments (``base_url``, ``headers``, ``event_hooks``, ...).

    Returns:
        The client; close it (or use it as a context manager).
    """
    jar = loopback_cookie_jar()

    def send_cookies(request: httpx.Request) -> None:
        request.headers.pop("cookie", None)
        httpx.Cookies(jar).set_cookie_header(request)

    hooks = dict(kwargs.pop("event_hooks", None) or {})
    hooks["request"] = [send_cookies, *hooks.get("request", [])]
    kwargs.setdefault("timeout", 30.0)
    kwargs.setdefault("follow_redirects", False)
    return httpx.Client(cookies=jar, event_hooks=hooks, **kwargs)


def _origin(url: str | httpx.URL) -> Origin:
    parts = urlsplit(str(url))
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, parts.hostname or "", parts.port or default)


def _location(response: httpx.Response) -> str | None:
    """The absolute target of a redirect response, or ``None`` when it is not one."""
    if not response.is_redirect:
        return None
    return urljoin(str(response.url), response.headers["location"])


def _page_error(response: httpx.Response) -> str:
    """The error Keycloak shows on a page (login form or error page), for an assertion message."""
    where = f"HTTP {response.status_code} at {response.url}"
    if not response.text.strip():
        return where
    page = lxml.html.fromstring(response.text)
    texts: list[str] = []
    for element in page.iter():
        ident = str(element.get("id") or "")
        classes = str(element.get("class") or "").split()
        if (
            ident == "kc-error-message"  # error pages
            or ident.startswith("input-error")  # the login form's field errors
            or "kc-feedback-text" in classes  # message boxes (e.g. "Account is disabled")
            or any(name.endswith("alert__title") for name in classes)
        ):
            text = " ".join("".join(str(part) for part in element.itertext()).split())
            if text and text not in texts:
                texts.append(text)
    if not texts:
        title = page.findtext(".//title")
        texts.append(f"no error message on the page (title: {' '.join((title or '').split())!r})")
    return f"{'; '.join(texts)} ({where})"


def _follow_within(client: httpx.Client, response: httpx.Response, idp: Origin) -> httpx.Response:
    """Follow redirects while they stay on the IdP's origin; return the first response that does not."""
    for _ in range(_MAX_HOPS):
        target = _location(response)
        if target is None or _origin(target) != idp:
            return response
        response = client.get(target, follow_redirects=False)
    raise AssertionError(f"more than {_MAX_HOPS} redirects inside Keycloak, last at {response.url}")


def idp_login(client: httpx.Client, authorize_url: str, username: str, password: str) -> httpx.Response:
    """Sign a user in at Keycloak, as a browser would, up to the redirect back to the relying party.

    GETs ``authorize_url``; when the client already holds a Keycloak SSO session for the realm, Keycloak
    redirects straight back and that response is returned. Otherwise it fills in Keycloak's login form
    (``form#kc-form-login``) and returns the response that redirects back to the relying party (a redirect
    whose ``Location`` is not on Keycloak's origin), without following it.

    Args:
        client: The browser's HTTP client (see :func:`browser_client`): it keeps Keycloak's cookies, which is
            what makes the SSO session last between calls.
        authorize_url: The authorization request, on Keycloak's origin (usually the ``Location`` the
            relying party's login endpoint redirected to).
        username: The user's username.
        password: The user's password (not used when an SSO session already exists).

    Returns:
        The redirect back to the relying party (its ``Location`` has ``code`` and ``state``, or ``error``).

    Raises:
        AssertionError: Keycloak showed its login page again (a wrong password, a disabled user), an error
            page (an unknown client or redirect URI), or another page (a required action): the message holds
            the text of the page's error.
    """
    idp = _origin(authorize_url)
    response = _follow_within(client, client.get(authorize_url, follow_redirects=False), idp)
    if _location(response) is not None:
        return response
    page = lxml.html.fromstring(response.text) if response.text.strip() else None
    form = page.find(".//form[@id='kc-form-login']") if page is not None else None
    if response.status_code != 200 or form is None:
        raise AssertionError(f"Keycloak showed no login form: {_page_error(response)}")
    action = urljoin(str(response.url), str(form.get("action") or ""))
    response = client.post(
        action,
        data={"username": username, "password": password, "credentialId": ""},
        follow_redirects=False,
    )
    response = _follow_within(client, response, idp)
    if _location(response) is not None:
        return response
    raise AssertionError(f"Keycloak did not sign {username!r} in: {_page_error(response)}")


class KeycloakAdmin:
    """Keycloak's admin REST API as the master realm's administrator (password grant of ``admin-cli``).

    Users and clients are named as in the realm files (``username``, ``clientId``); their ids are looked up.
    Every call raises ``httpx.HTTPStatusError`` when Keycloak refuses it.

    Args:
        base_url: Keycloak's URL; default ``E2E_KEYCLOAK_URL``.
        username: The master realm's administrator; default ``E2E_KEYCLOAK_ADMIN_USER``.
        password: Its password; default ``E2E_KEYCLOAK_ADMIN_PASSWORD``.
    """

    def __init__(self, base_url: str | None = None, username: str | None = None, password: str | None = None):
        self.base_url = (base_url or os.environ["E2E_KEYCLOAK_URL"]).rstrip("/")
        self._username = username or os.environ["E2E_KEYCLOAK_ADMIN_USER"]
        self._password = password or os.environ["E2E_KEYCLOAK_ADMIN_PASSWORD"]
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0)
        self._token = ""
        self._token_expires = 0.0

    def __enter__(self) -> KeycloakAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    # ------------------------------------------------------------------ plumbing
    def _access_token(self) -> str:
        """The admin access token, renewed shortly before it expires (the master realm's lasts 60 s)."""
        if time.monotonic() >= self._token_expires:
            response = self._http.post(
                "/realms/master/protocol/openid-connect/token",
                data={
                    "grant_type": "password",
                    "client_id": "admin-cli",
                    "username": self._username,
                    "password": self._password,
                },
            )
            response.raise_for_status()
            body = response.json()
            self._token = str(body["access_token"])
            self._token_expires = time.monotonic() + float(body.get("expires_in", 60)) - 15
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One admin API call.

        Args:
            method: The HTTP method.
            path: The path under ``/admin/realms`` (e.g. ``/hospital/users``).
            **kwargs: More ``httpx.Client.request`` arguments (``json``, ``params``, ...).

        Returns:
            The successful response.

        Raises:
            httpx.HTTPStatusError: Keycloak answered with an error status.
        """
        headers = {"Authorization": f"Bearer {self._access_token()}"}
        response = self._http.request(method, "/admin/realms" + path, headers=headers, **kwargs)
        if response.is_error:
            raise httpx.HTTPStatusError(
                f"Keycloak: {method} /admin/realms{path} -> {response.status_code}: {response.text[:500]}",
                request=response.request,
                response=response,
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @staticmethod
    def _created_id(response: httpx.Response) -> str:
        """The id of what a POST created, from its ``Location``."""
        return response.headers["location"].rstrip("/").rsplit("/", 1)[-1]

    # ------------------------------------------------------------------ realms and clients
    def realm(self, realm: str) -> dict[str, Any]:
        """The realm's representation.

        Args:
            realm: The realm's name.

        Returns:
            The representation (``id`` is its internal id).
        """
        rep: dict[str, Any] = self._json("GET", f"/{realm}")
        return rep

    def client(self, realm: str, client_id: str) -> dict[str, Any]:
        """A client's representation.

        Args:
            realm: The realm's name.
            client_id: The client's ``clientId`` (e.g. ``gateway``).

        Returns:
            The representation (``id`` is its internal id; ``attributes`` its attributes).
        """
        found: list[dict[str, Any]] = self._json("GET", f"/{realm}/clients", params={"clientId": client_id})
        matching = [rep for rep in found if rep.get("clientId") == client_id]
        assert len(matching) == 1, f"client {client_id!r} in realm {realm!r}: {len(matching)} found"
        return matching[0]

    def client_attributes(self, realm: str, client_id: str) -> dict[str, str]:
        """A client's attributes.

        Args:
            realm: The realm's name.
            client_id: The client's ``clientId``.

        Returns:
            The attributes, e.g. ``backchannel.logout.url``.
        """
        return dict(self.client(realm, client_id).get("attributes") or {})

    def set_client_attributes(self, realm: str, client_id: str, attributes: dict[str, str]) -> None:
        """Set some attributes of a client, keeping the others.

        Args:
            realm: The realm's name.
            client_id: The client's ``clientId``.
            attributes: The attributes to set, e.g. ``{"backchannel.logout.url": "http://127.0.0.1:1234/..."}``
                (an empty string clears one).
        """
        rep = self.client(realm, client_id)
        rep["attributes"] = {**(rep.get("attributes") or {}), **attributes}
        self.request("PUT", f"/{realm}/clients/{rep['id']}", json=rep)

    def add_protocol_mapper(self, realm: str, client_id: str, mapper: dict[str, Any]) -> str:
        """Add a protocol mapper to a client.

        Args:
            realm: The realm's name.
            client_id: The client's ``clientId``.
            mapper: The mapper's representation (``name``, ``protocolMapper``, ``config``; ``protocol``
                defaults to ``openid-connect``).

        Returns:
            The new mapper's id (for :meth:`remove_protocol_mapper`).
        """
        uuid = self.client(realm, client_id)["id"]
        response = self.request(
            "POST",
            f"/{realm}/clients/{uuid}/protocol-mappers/models",
            json={"protocol": "openid-connect", **mapper},
        )
        return self._created_id(response)

    def remove_protocol_mapper(self, realm: str, client_id: str, mapper_id: str) -> None:
        """Delete a protocol mapper of a client.

        Args:
            realm: The realm's name.
            client_id: The client's ``clientId``.
            mapper_id: The mapper's id, as :meth:`add_protocol_mapper` returned it.
        """
        uuid = self.client(realm, client_id)["id"]
        self.request("DELETE", f"/{realm}/clients/{uuid}/protocol-mappers/models/{mapper_id}")

    def add_audience_override(self, realm: str, client_id: str, audience: str) -> str:
        """Make the client's ID tokens say ``"aud": audience`` instead of the client's own id.

        A hardcoded-claim mapper on ``aud`` (ID token only) replaces the audience Keycloak sets; ``azp``
        stays the client. (Keycloak's audience mapper could only *add* an audience:
        ``"aud": [client_id, audience]``.) Undo with :meth:`remove_protocol_mapper`.

        Args:
            realm: The realm's name.
            client_id: The client's ``clientId`` (e.g. ``gateway``).
            audience: The audience the ID tokens get (e.g. ``other-service``).

        Returns:
            The mapper's id.
        """
        return self.add_protocol_mapper(
            realm,
            client_id,
            {
                "name": f"e2e aud override {audience}",
                "protocolMapper": "oidc-hardcoded-claim-mapper",
                "config": {
                    "claim.name": "aud",
                    "claim.value": audience,
                    "jsonType.label": "String",
                    "id.token.claim": "true",
                    "access.token.claim": "false",
                    "userinfo.token.claim": "false",
                    "introspection.token.claim": "false",
                },
            },
        )

    # ------------------------------------------------------------------ users
    def user_id(self, realm: str, username: str) -> str:
        """A user's id.

        Args:
            realm: The realm's name.
            username: The username.

        Returns:
            The user's id (the ``sub`` of its tokens).
        """
        found: list[dict[str, Any]] = self._json(
            "GET", f"/{realm}/users", params={"username": username, "exact": "true"}
        )
        matching = [rep for rep in found if rep.get("username") == username.lower()]
        assert len(matching) == 1, f"user {username!r} in realm {realm!r}: {len(matching)} found"
        return str(matching[0]["id"])

    def user(self, realm: str, username: str) -> dict[str, Any]:
        """A user's representation.

        Args:
            realm: The realm's name.
            username: The username.

        Returns:
            The representation.
        """
        rep: dict[str, Any] = self._json("GET", f"/{realm}/users/{self.user_id(realm, username)}")
        return rep

    def create_user(
        self,
        realm: str,
        username: str,
        password: str,
        roles: list[str],
        *,
        first_name: str = "E2E",
        last_name: str | None = None,
        email: str | None = None,
    ) -> str:
        """Create an enabled user with a verified e-mail, a password and exactly these realm roles.

        The profile is complete (first and last name, e-mail), so that Keycloak asks for nothing at sign-in.

        Args:
            realm: The realm's name.
            username: The username.
            password: The password (not temporary).
            roles: The realm roles (names) the user gets, and no others.
            first_name: The first name.
            last_name: The last name; default the username.
            email: The e-mail address; default ``<username>@<realm>.example``.

        Returns:
            The new user's id.
        """
        response = self.request(
            "POST",
            f"/{realm}/users",
            json={
                "username": username,
                "enabled": True,
                "emailVerified": True,
                "firstName": first_name,
                "lastName": last_name or username,
                "email": email or f"{username}@{realm}.example",
                "credentials": [{"type": "password", "value": password, "temporary": False}],
                "requiredActions": [],
            },
        )
        user_id = self._created_id(response)
        self.set_realm_roles(realm, username, roles)
        return user_id

    def delete_user(self, realm: str, username: str) -> None:
        """Delete a user.

        Args:
            realm: The realm's name.
            username: The username.
        """
        self.request("DELETE", f"/{realm}/users/{self.user_id(realm, username)}")

    def set_realm_roles(self, realm: str, username: str, roles: list[str]) -> None:
        """Replace a user's realm role mappings: afterwards the user has exactly ``roles`` as realm roles.

        A user created through the API starts with the composite ``default-roles-<realm>``; naming it in
        ``roles`` keeps it, otherwise it goes too. Roles of clients are not touched.

        Args:
            realm: The realm's name.
            username: The username.
            roles: Names of realm roles.

        Raises:
            ValueError: A name is not a role of the realm.
        """
        user_id = self.user_id(realm, username)
        available = {rep["name"]: rep for rep in self._json("GET", f"/{realm}/roles")}
        unknown = sorted(set(roles) - set(available))
        if unknown:
            raise ValueError(f"not realm roles of {realm!r}: {unknown}")
        path = f"/{realm}/users/{user_id}/role-mappings/realm"
        current: list[dict[str, Any]] = self._json("GET", path)
        have = {rep["name"] for rep in current}
        remove = [rep for rep in current if rep["name"] not in roles]
        add = [available[name] for name in dict.fromkeys(roles) if name not in have]
        if remove:
            self.request("DELETE", path, json=remove)
        if add:
            self.request("POST", path, json=add)

    def realm_roles(self, realm: str, username: str) -> list[str]:
        """The realm roles mapped to a user directly (composites not expanded).

        Args:
            realm: The realm's name.
            username: The username.

        Returns:
            The role names, sorted.
        """
        path = f"/{realm}/users/{self.user_id(realm, username)}/role-mappings/realm"
        return sorted(rep["name"] for rep in self._json("GET", path))

    def set_enabled(self, realm: str, username: str, enabled: bool) -> None:
        """Enable or disable a user (a disabled user cannot sign in; its sessions stay until logged out).

        Args:
            realm: The realm's name.
            username: The username.
            enabled: The new state.
        """
        rep = self.user(realm, username)
        rep["enabled"] = enabled
        self.request("PUT", f"/{realm}/users/{rep['id']}", json=rep)

    def logout_user(self, realm: str, username: str) -> None:
        """End all of a user's sessions in the realm.

        Keycloak then sends a back-channel logout token to the ``backchannel.logout.url`` of each client the
        user had signed in to.

        Args:
            realm: The realm's name.
            username: The username.
        """
        self.request("POST", f"/{realm}/users/{self.user_id(realm, username)}/logout")

    def sessions(self, realm: str, username: str) -> list[dict[str, Any]]:
        """A user's active SSO sessions.

        Args:
            realm: The realm's name.
            username: The username.

        Returns:
            The sessions (``id`` is the ``sid`` of the ID tokens; ``clients`` maps client ids to clientIds).
        """
        path = f"/{realm}/users/{self.user_id(realm, username)}/sessions"
        found: list[dict[str, Any]] = self._json("GET", path)
        return found

    # ------------------------------------------------------------------ signing keys
    def keys(self, realm: str) -> dict[str, Any]:
        """The realm's keys as the admin console lists them.

        Args:
            realm: The realm's name.

        Returns:
            ``{"active": {algorithm: kid}, "keys": [{"kid", "algorithm", "providerId", "status", ...}]}``
            (``providerId`` is the id of the key provider component).
        """
        found: dict[str, Any] = self._json("GET", f"/{realm}/keys")
        return found

    def active_kids(self, realm: str) -> dict[str, str]:
        """Which key signs now, per algorithm: the active key of highest priority.

        Args:
            realm: The realm's name.

        Returns:
            ``{algorithm: kid}``, e.g. ``{"RS256": "...", "HS512": "...", "RSA-OAEP": "..."}``.
        """
        return dict(self.keys(realm).get("active") or {})

    def key_providers(self, realm: str) -> list[dict[str, Any]]:
        """The realm's key provider components.

        Args:
            realm: The realm's name.

        Returns:
            Their representations (``id``, ``name``, ``providerId`` such as ``rsa-generated``, ``config``).
        """
        parent = self.realm(realm)["id"]
        found: list[dict[str, Any]] = self._json(
            "GET", f"/{realm}/components", params={"parent": parent, "type": KEY_PROVIDER_TYPE}
        )
        return found

    def add_rsa_key(self, realm: str, name: str, priority: int) -> str:
        """Add a generated RSA signing key (RS256, 2048 bits), as a new ``rsa-generated`` key provider.

        Keycloak signs with the active key of highest priority (its default ``rsa-generated`` provider has
        priority 100): give a higher one to rotate to the new key. The old key stays in the JWKS until its
        provider is removed (:meth:`remove_key_provider`).

        Args:
            realm: The realm's name.
            name: The provider's name (to remove it later by name).
            priority: The provider's priority.

        Returns:
            The new key's ``kid``.
        """
        response = self.request(
            "POST",
            f"/{realm}/components",
            json={
                "name": name,
                "providerId": "rsa-generated",
                "providerType": KEY_PROVIDER_TYPE,
                "parentId": self.realm(realm)["id"],
                "config": {
                    "priority": [str(priority)],
                    "enabled": ["true"],
                    "active": ["true"],
                    "algorithm": ["RS256"],
                    "keySize": ["2048"],
                },
            },
        )
        component_id = self._created_id(response)
        kids = [
            str(key["kid"])
            for key in self.keys(realm).get("keys", [])
            if key.get("providerId") == component_id and key.get("algorithm") == "RS256"
        ]
        assert len(kids) == 1, f"key provider {name!r} ({component_id}) has {len(kids)} RS256 keys"
        return kids[0]

    def remove_key_provider(self, realm: str, name_or_component_id: str) -> None:
        """Delete a key provider component, and with it its keys (they leave the JWKS).

        Args:
            realm: The realm's name.
            name_or_component_id: The component's id, or its name (``rsa-generated`` is the name of the
                realm's original RSA signing key provider).

        Raises:
            AssertionError: No provider, or more than one, has that name.
        """
        providers = self.key_providers(realm)
        matching = [rep for rep in providers if rep["id"] == name_or_component_id]
        if not matching:
            matching = [rep for rep in providers if rep.get("name") == name_or_component_id]
        assert len(matching) == 1, f"key provider {name_or_component_id!r} in {realm!r}: {len(matching)}"
        self.request("DELETE", f"/{realm}/components/{matching[0]['id']}")
