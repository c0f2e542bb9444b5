// The chat page (chat/templates/chat/index.html): mounts OpenAI's ChatKit web component and
// hands it client secrets from our session endpoint, and shows what the broker did meanwhile.
// ChatKit comes from OpenAI's CDN; when it cannot load (no network, a blocked script), the page
// asks for a session itself, so the panel still tells who this browser is and how long its
// session lasts. Plain script, no build step.
"use strict";

(function () {
  const app = document.getElementById("chat-app");
  const $ = (id) => document.getElementById(id);
  const sessionUrl = app.dataset.sessionUrl;
  const identityUrl = app.dataset.identityUrl;

  // The current secret lives only here: it is never written into the page.
  let currentSecret = null;
  let session = null; // {mintedAt, expiresAt} in unix seconds
  let identityKnown = "known" in $("identity-ref").dataset;

  // Django's CSRF token, from its cookie. Only signed-in users' POSTs need it; sending it
  // always is harmless and keeps one code path.
  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  class BrokerError extends Error {
    constructor(message, { code = null, requestId = null, retryAfter = null } = {}) {
      super(message);
      this.code = code;
      this.requestId = requestId;
      this.retryAfter = retryAfter;
    }
  }

  // ChatKit's hook: null asks for the first session, the secret it holds asks for a new one.
  // Resolves to the bare secret; throws with a message a person can read.
  async function getClientSecret(current) {
    let response;
    try {
      response = await fetch(sessionUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ current_client_secret: current }),
      });
    } catch (networkError) {
      throw showError(
        new BrokerError("We couldn't reach the server. Check your connection and try again."),
      );
    }
    // The answer, a refusal too, may have given a new browser its id.
    if (!identityKnown) refreshIdentity();
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || !body.client_secret) {
      throw showError(brokerError(response, body));
    }
    currentSecret = body.client_secret;
    session = { mintedAt: Date.now() / 1000, expiresAt: body.expires_at };
    hideError();
    tick();
    return currentSecret;
  }

  function brokerError(response, body) {
    const error = body && body.error;
    if (!error) {
      // Not our envelope: a proxy in front of us answered (an HTML 502, say).
      return new BrokerError(`The server answered unexpectedly (HTTP ${response.status}).`);
    }
    const seconds = parseInt(response.headers.get("Retry-After"), 10);
    return new BrokerError(error.message, {
      code: error.code,
      requestId: error.request_id,
      retryAfter: Number.isFinite(seconds) ? seconds : null,
    });
  }

  function showError(error) {
    const busy = ["rate_limited", "anonymous_budget_spent", "upstream_rate_limited"];
    let title = session ? "We couldn't renew your session" : "We couldn't start your chat";
    if (busy.includes(error.code)) title = "Too many chats right now";
    $("error-title").textContent = title;
    let message = error.message;
    if (error.retryAfter) message += ` Try again in ${error.retryAfter} s.`;
    $("error-message").textContent = message;
    $("error-request-id").textContent = error.requestId || "";
    $("error-request-id").parentElement.hidden = !error.requestId;
    $("last-error").hidden = false;
    if (!session) $("session-state").textContent = "No session";
    return error;
  }

  function hideError() {
    $("last-error").hidden = true;
  }

  async function refreshIdentity() {
    try {
      const response = await fetch(identityUrl, { credentials: "same-origin" });
      const identity = await response.json();
      $("identity-kind").textContent = identity.signed_in ? "Signed in" : "Anonymous browser";
      $("identity-kind").classList.toggle("badge-signed-in", identity.signed_in);
      $("identity-ref").textContent = identity.pseudonym || "new visitor";
      identityKnown = Boolean(identity.pseudonym);
    } catch (error) {
      // The panel keeps what it showed; the chat itself does not depend on it.
    }
  }

  function tick() {
    if (!session) return;
    const now = Date.now() / 1000;
    const left = Math.max(0, Math.round(session.expiresAt - now));
    const lifetime = Math.max(1, session.expiresAt - session.mintedAt);
    $("session-countdown").textContent =
      `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    $("session-meter").style.transform = `scaleX(${Math.min(1, left / lifetime)})`;
    const until = new Date(session.expiresAt * 1000).toLocaleTimeString([], {
      hour: "2-digit",
      minute: "2-digit",
    });
    $("session-state").textContent = left > 0 ? `Active until ${until}` : "Expired";
    app.classList.toggle("session-expired", left === 0);
  }

  // A refresh for the same user, as ChatKit asks for one. With the widget mounted it keeps the
  // secret it holds until it asks again; the panel shows the broker minting all the same.
  async function newSession() {
    const button = $("new-session");
    button.disabled = true;
    try {
      await getClientSecret(currentSecret);
    } catch (error) {
      // Already shown in the panel.
    } finally {
      button.disabled = false;
    }
  }

  function placeholder(title, text, { busy = false } = {}) {
    $("chat-placeholder-title").textContent = title;
    $("chat-placeholder-text").textContent = text;
    $("chat-placeholder").classList.toggle("placeholder-busy", busy);
  }

  function mountChatKit() {
    customElements.whenDefined("openai-chatkit").then(() => {
      const widget = document.createElement("openai-chatkit");
      widget.className = "chatkit";
      $("chat-slot").replaceChildren(widget);
      const dark = window.matchMedia("(prefers-color-scheme: dark)").matches;
      widget.setOptions({ api: { getClientSecret }, theme: dark ? "dark" : "light" });
    });
  }

  function chatKitUnavailable() {
    placeholder(
      "The chat window couldn't load",
      "It comes from OpenAI, which this page can't reach right now. The panel shows your " +
        "session all the same.",
    );
    getClientSecret(null).catch(() => {});
  }

  function loadChatKit() {
    placeholder("Loading the chat…", "", { busy: true });
    const script = document.createElement("script");
    script.src = app.dataset.chatkitSrc;
    script.async = true;
    script.addEventListener("load", mountChatKit);
    script.addEventListener("error", chatKitUnavailable);
    document.head.append(script);
  }

  $("new-session").addEventListener("click", newSession);
  setInterval(tick, 1000);
  loadChatKit();
})();
