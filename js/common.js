// Shared helpers of the MotionNFT front end. DOM only: nothing is drawn on the graph canvas.
import { api } from "../../scripts/api.js";

export const NODE = {
  opticalFlow: "MotionNFT_OpticalFlow",
  flowToImage: "MotionNFT_FlowToImage",
  motionReward: "MotionNFT_MotionReward",
  dragToFlow: "MotionNFT_DragToFlow",
  judgeEdit: "MotionNFT_JudgeEdit",
  minePairs: "MotionNFT_MinePairs",
  loraKontext: "MotionNFT_LoadLoraKontext",
  loraQwen: "MotionNFT_LoadLoraQwenImageEdit",
};

/** URL of a file the server listed in a node's ui output ({filename, subfolder, type}). */
export function viewUrl(item) {
  const query = new URLSearchParams({
    filename: item.filename,
    subfolder: item.subfolder ?? "",
    type: item.type ?? "output",
  });
  return api.apiURL(`/view?${query}`);
}

/** URL of a file in ComfyUI's input folder, given LoadImage's value ("sub/name.png" or "name.png"). */
export function inputUrl(value) {
  const parts = String(value).split("/");
  const filename = parts.pop();
  return viewUrl({ filename, subfolder: parts.join("/"), type: "input" });
}

export function element(tag, className, style = {}, text = "") {
  const el = document.createElement(tag);
  if (className) el.className = className;
  Object.assign(el.style, style);
  if (text) el.textContent = text;
  return el;
}

/** Wrap a node-type method so ours runs after the original. */
export function chain(nodeType, method, after) {
  const original = nodeType.prototype[method];
  nodeType.prototype[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

export const PANEL_STYLE = {
  boxSizing: "border-box",
  width: "100%",
  padding: "4px 6px",
  font: "11px/1.35 sans-serif",
  color: "var(--input-text, #ddd)",
  background: "var(--comfy-input-bg, #222)",
  borderRadius: "4px",
  overflow: "hidden",
};

/** Add a display-only DOM widget: never saved in the workflow, never sent to the server. */
export function addPanel(node, name, root, minHeight) {
  const widget = node.addDOMWidget(name, name, root, { serialize: false, getMinHeight: () => minHeight });
  widget.serialize = false;
  return widget;
}
