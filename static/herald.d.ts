/**
 * Types for herald.js loaded as a classic script (`<script src=".../static/herald.js">`),
 * which defines the global `HeraldClient`. As an ES module, import herald.mjs instead
 * (typed by herald.d.mts). The protocol behind them: docs/protocol.md.
 */
declare namespace Herald {
  /** The connection's state, as `onState` reports it. */
  type State = "connecting" | "live" | "reconnecting" | "offline" | "signed-out";

  /** A notification, in seq order, each once. */
  interface Notification {
    type: "notification";
    id: number;
    seq: number;
    title: string;
    body: string | null;
    data: { [key: string]: unknown };
    link: string | null;
    category: string | null;
    /** The collapse key: an inbox shows one item per unread group (`readGroup`). */
    group_key: string | null;
    created_at: string;
    expires_at: string | null;
    read: boolean;
    archived: boolean;
  }

  /** A change of the user's rows, from any tab, device, node, HTTP or SQL. A read-all
   * says `all: true` and `seq`: every notification up to that seq is read. */
  interface Change {
    type: "read" | "unread" | "archive" | "unarchive";
    ids: number[];
    unread: number;
    all?: true;
    seq?: number;
  }

  interface Welcome {
    type: "welcome";
    user: string;
    node: string;
    last_seq: number;
    unread: number;
    /** The categories the user muted, sorted (not counted in `unread`). */
    muted: string[];
  }

  /** The user's muted categories changed (from any tab, device, HTTP or SQL). */
  interface Preferences {
    type: "preferences";
    /** Sorted. */
    muted: string[];
    unread: number;
  }

  /** A change the client sent (or queued) as the protocol's change frame. */
  interface SentChange {
    type: "read" | "unread" | "archive" | "unarchive" | "mute" | "unmute";
    ref: number;
    ids?: number[];
    all?: true;
    group_key?: string;
    category?: string;
  }

  /** Why a change was dropped for good: "malformed" (close 4400), "too_many_muted",
   * "other_user" (made before another user's session took over), or another error code. */
  interface Refusal {
    code: "malformed" | "too_many_muted" | "other_user" | (string & {});
    message: string;
  }

  /** A JWT, null for the login cookie, or a function called for every connection. */
  type Token = string | null | (() => string | null | PromiseLike<string | null>);

  interface Options {
    /** Default: ws(s)://this page's host/ws. */
    url?: string;
    token?: Token;
    /** Resume after this seq; null: every notification not yet delivered. */
    lastSeq?: number | null;
    /** The user id: routes the socket to its shard's node (`?shard=`). */
    user?: string;
    /** A change unconfirmed this long (ms, default 5000): the socket is replaced. */
    confirmWithinMs?: number;
    /** A connection not welcomed this long (ms, default 10000) is given up and retried. */
    welcomeWithinMs?: number;
    /** false: do not connect until `connect()` is called. */
    connect?: boolean;
    onNotification?(notification: Notification): void;
    onRead?(change: Change): void;
    onChange?(change: Change): void;
    onWelcome?(welcome: Welcome): void;
    onPreferences?(preferences: Preferences): void;
    onState?(state: State, detail: { retryAt?: number | null }): void;
    /** Changes not yet confirmed by the server. */
    onPending?(count: number): void;
    /** The token was refused (close 4401). */
    onAuthError?(message: string): void;
    /** A change was dropped for good: a page that showed it at once takes it back. */
    onRefused?(change: SentChange, error: Refusal): void;
  }
}

declare class HeraldClient {
  constructor(options?: Herald.Options);
  readonly state: Herald.State;
  /** While reconnecting: when the next attempt starts (epoch ms). */
  readonly retryAt: number | null;
  /** The last seq delivered to `onNotification`. */
  readonly lastSeq: number | null;
  readonly url: string;
  token: Herald.Token;
  connect(): void;
  retryNow(): void;
  setToken(token: Herald.Token): void;
  close(): void;
  /** Each change returns true when sent at once, false when queued; ids must be a
   * non-empty array of notification ids (else a TypeError). */
  markRead(ids: number[]): boolean;
  markAllRead(): boolean;
  markUnread(ids: number[]): boolean;
  archive(ids: number[]): boolean;
  unarchive(ids: number[]): boolean;
  /** Mark every unread notification of the group read (a `group_key`, 1-200 chars). */
  readGroup(groupKey: string): boolean;
  /** Mute or unmute a category (1-64 chars); at most 100 muted. */
  mute(category: string): boolean;
  unmute(category: string): boolean;
  ack(seq: number): boolean;
  /** Changes not yet confirmed by the server. */
  pending(): number;
  /** The user's shard (0-63), as the database computes it. */
  static shardOf(user: string): number;
}
