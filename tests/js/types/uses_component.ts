/// <reference path="../../../static/herald-inbox.d.ts" />
// <herald-inbox> as a host page's TypeScript would use it.
const bell = document.createElement("herald-inbox");
bell.setAttribute("mode", "bell");
bell.token = () => Promise.resolve("eyJ…");
bell.strings = { heading: "Alerts" };
bell.renderItem = (n, content) => (n.group_key ? content : null);
bell.addEventListener("herald-notification", (e) => {
  const title: string = e.detail.notification.title;
  console.log(title, e.detail.muted);
});
bell.addEventListener("herald-click", (e) => { if (e.detail.notification.link) e.preventDefault(); });
bell.addEventListener("herald-unread", (e) => { document.title = `(${e.detail.unread})`; });
document.body.appendChild(bell);
const found = document.querySelector("herald-inbox");
if (found) found.open();
const unread: number = bell.unread;
console.log(unread, bell.state === "live");
