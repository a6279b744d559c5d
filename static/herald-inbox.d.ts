/**
 * Types for <herald-inbox> (`<script src=".../static/herald-inbox.js">`): the element, its
 * events and its tag in `document.querySelector`/`createElement`. Its notifications are
 * herald.js's (herald.d.ts). The reference: docs/component.md.
 */
/// <reference path="./herald.d.ts" />

declare namespace HeraldInboxTypes {
  /** Texts by key (HeraldInbox.strings.en lists them); `{n}`, `{title}`… are filled in. */
  type Strings = { [key: string]: string };

  interface NotificationDetail {
    notification: Herald.Notification;
    /** Its category is muted: not counted, not announced. */
    muted: boolean;
  }

  interface EventMap {
    "herald-notification": CustomEvent<NotificationDetail>;
    /** Cancelable: preventDefault() and the element does not follow the link. */
    "herald-click": CustomEvent<{ notification: Herald.Notification }>;
    "herald-unread": CustomEvent<{ unread: number }>;
    "herald-state": CustomEvent<{ state: Herald.State }>;
    "herald-welcome": CustomEvent<Herald.Welcome>;
    /** The token was refused: set a fresh `token`. */
    "herald-auth-error": CustomEvent<{ reason: string }>;
  }
}

declare class HeraldInbox extends HTMLElement {
  /** The built-in strings, by language. */
  static readonly strings: { [lang: string]: HeraldInboxTypes.Strings };
  /** A JWT, null for the `herald_token` cookie, or a function asked again whenever the
   * token is refused (an identity provider's getter). */
  token: Herald.Token;
  /** Texts replacing the built-in ones, by key. */
  strings: Partial<HeraldInboxTypes.Strings> | null;
  /** A Node to show instead of an item's default content, or null for the default. */
  renderItem: ((notification: Herald.Notification, defaultContent: HTMLElement) =>
    Node | null | undefined) | null | undefined;
  readonly unread: number;
  readonly state: Herald.State;
  open(): void;
  close(): void;
  toggle(): void;
  retryNow(): void;
  refresh(): Promise<void>;
  signOut(): void;
  restart(): void;
  addEventListener<K extends keyof HeraldInboxTypes.EventMap>(
    type: K, listener: (this: HeraldInbox, event: HeraldInboxTypes.EventMap[K]) => void,
    options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject,
                   options?: boolean | AddEventListenerOptions): void;
}

interface HTMLElementTagNameMap {
  "herald-inbox": HeraldInbox;
}
