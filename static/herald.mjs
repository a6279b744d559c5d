/*
 * herald.js as an ES module:
 *
 *   import { HeraldClient } from "https://push.example.com/static/herald.mjs";
 *
 * It loads herald.js (which defines window.HeraldClient) and exports what it defined:
 * one implementation, two ways to load it. Types: herald.d.mts.
 */
import "./herald.js";

export const HeraldClient = window.HeraldClient;
export const shardOf = HeraldClient.shardOf;
export default HeraldClient;
