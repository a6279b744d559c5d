/*
 * Herald's own inbox page: a <herald-inbox> element (static/herald-inbox.js does the
 * inbox) and what only this page does around it.
 *
 * Authentication: the login cookie (set by the host application, or /login in dev), or
 * a token handed over in the URL fragment (#token=...), which browsers never send to
 * any server; it is moved to sessionStorage and removed from the address bar at once. A
 * refused handed-over token is forgotten and the cookie tried (it may be fresher).
 *
 * The page says who is signed in, keeps the unread count in the tab's title, shows
 * "not signed in" or "your session has ended" (the list stays; a fresh token in the
 * fragment, or "Try again" after signing in elsewhere, resumes it in place), signs out
 * every tab of the browser at once, and in dev mode sends notifications.
 */
(function () {
  "use strict";

  var app = document.getElementById("app");
  var inbox = document.getElementById("inbox");
  var who = document.getElementById("who");
  var signedOut = document.getElementById("signed-out");
  var ended = document.getElementById("session-ended");
  var endedRetry = document.getElementById("session-retry");
  var welcomed = false;     // a session was live on this page

  function takeFragmentToken() {
    var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (match) {
      sessionStorage.setItem("herald.token", decodeURIComponent(match[1]));
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return sessionStorage.getItem("herald.token");
  }

  var token = takeFragmentToken();
  if (token) inbox.token = token;

  inbox.addEventListener("herald-welcome", function (event) {
    welcomed = true;
    who.textContent = "Signed in as " + event.detail.user;
    ended.hidden = true;
    signedOut.hidden = true;
    inbox.hidden = false;
  });

  inbox.addEventListener("herald-unread", function (event) {
    var unread = event.detail.unread;
    document.title = (unread ? "(" + unread + ") " : "") + "Inbox · Herald";
  });

  inbox.addEventListener("herald-auth-error", function () {
    if (token) {
      // A stale handed-over token: forget it, so the login cookie (which may be
      // fresher: another tab signed in again) is what the next attempt uses.
      sessionStorage.removeItem("herald.token");
      token = null;
      inbox.token = null;
    } else if (welcomed) {
      who.textContent = "";
      ended.hidden = false;
    } else {
      showSignedOut();
    }
  });

  /** No credentials at all: nothing to show but how to sign in. */
  function showSignedOut() {
    sessionStorage.removeItem("herald.token");
    inbox.signOut();
    inbox.hidden = true;
    ended.hidden = true;
    signedOut.hidden = false;
    who.textContent = "";
  }

  endedRetry.addEventListener("click", function () {
    // The login cookie may have been renewed meanwhile (another tab signed in again).
    token = sessionStorage.getItem("herald.token");
    inbox.token = token;
  });

  // A host application hands over a fresh token by setting the fragment again.
  window.addEventListener("hashchange", function () {
    if (!/(?:^#|&)token=/.test(window.location.hash)) return;
    token = takeFragmentToken();
    inbox.token = token;
  });

  // --- dev: send a notification -----------------------------------------------------

  var form = document.getElementById("send-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = {};
      new FormData(form).forEach(function (value, key) { if (value) data[key] = value; });
      var result = document.getElementById("send-result");
      result.classList.remove("error");
      result.textContent = "Sending…";
      var headers = {"Content-Type": "application/json"};
      if (token) headers.Authorization = "Bearer " + token;
      fetch("/dev/send", {method: "POST", headers: headers, body: JSON.stringify(data),
                          credentials: "same-origin"}).then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(body.error.message);
          result.textContent = "Sent (seq " + body.notifications[0].seq + ")";
          ["send-title", "send-body", "send-link", "send-category", "send-group"]
            .forEach(function (id) {
              var input = document.getElementById(id);
              if (input) input.value = "";
            });
        }, function () { throw new Error("the server answered " + response.status); });
      }).catch(function (err) {
        result.classList.add("error");
        result.textContent = "Not sent: " + (err.message === "Failed to fetch"
          ? "the server is unreachable" : err.message);
      });
    });
  }

  // Signing out ends the session in every tab of this browser, not only this one.
  var signOut = document.querySelector('a[href="/logout"]');
  if (signOut) {
    signOut.addEventListener("click", function () {
      sessionStorage.removeItem("herald.token");
      try { localStorage.setItem("herald.signed-out", String(Date.now())); } catch (err) {}
    });
  }
  window.addEventListener("storage", function (event) {
    if (event.key === "herald.signed-out" && event.newValue) showSignedOut();
  });

  app.dataset.ready = "true";
})();
