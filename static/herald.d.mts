/** Types for herald.mjs, herald.js as an ES module (the declarations are herald.d.ts's). */
/// <reference path="./herald.d.ts" />

type Client = HeraldClient;
declare const Client: typeof HeraldClient;
export { Client as HeraldClient };
export default Client;
export declare function shardOf(user: string): number;
export type Options = Herald.Options;
export type Notification = Herald.Notification;
export type Change = Herald.Change;
export type Welcome = Herald.Welcome;
export type Preferences = Herald.Preferences;
export type State = Herald.State;
export type Token = Herald.Token;
export type SentChange = Herald.SentChange;
export type Refusal = Herald.Refusal;
