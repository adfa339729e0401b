// Point-drag editor on the Drag to Flow node: click a point of the image, drag it to where
// it should go; several pairs; Undo and Clear buttons. The node's `drags` text widget holds
// the value, {"size": [W, H], "drags": [[x0, y0, x1, y1], ...]} in pixels of the image
// shown, so every drag is also a graph change that ComfyUI's own Ctrl+Z undoes.
// The image is fitted whole into the space the node gives the editor (like CSS
// object-fit: contain), at any node size; the drags are drawn and read in a frame laid
// exactly over the image, so the mapping to image pixels holds however it is scaled.
import { app } from "../../scripts/app.js";
import { NODE, PANEL_STYLE, addPanel, chain, element, inputUrl, viewUrl } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
const MIN_STAGE_HEIGHT = 60;

/** The box ``[left, top, width, height]`` of a ``size = [W, H]`` image fitted whole (contain)
 * and centred in a ``boxWidth`` x ``boxHeight`` box. */
export function containRect(size, boxWidth, boxHeight) {
  if (!size || !(size[0] > 0) || !(size[1] > 0) || !(boxWidth > 0) || !(boxHeight > 0)) return [0, 0, boxWidth, boxHeight];
  const scale = Math.min(boxWidth / size[0], boxHeight / size[1]);
  const width = size[0] * scale, height = size[1] * scale;
  return [(boxWidth - width) / 2, (boxHeight - height) / 2, width, height];
}

export function parseDrags(text) {
  try {
    const value = JSON.parse(text || "{}");
    const drags = Array.isArray(value) ? value : value.drags;
    if (!Array.isArray(drags)) return { size: null, drags: [] };
    const valid = drags.filter((d) => Array.isArray(d) && d.length === 4 && d.every(Number.isFinite));
    return { size: Array.isArray(value.size) ? value.size : null, drags: valid };
  } catch {
    return { size: null, drags: [] };
  }
}

function svgElement(tag, attributes) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  return el;
}

class DragEditor {
  constructor(node, widget) {
    this.node = node;
    this.widget = widget;
    this.drags = [];
    this.size = null;
    this.pending = null;
    this.root = element("div", "motionnft-drag-editor", { ...PANEL_STYLE, height: "100%", display: "flex", flexDirection: "column", gap: "4px" });
    const bar = element("div", "motionnft-drag-toolbar", { display: "flex", flexWrap: "wrap", gap: "4px 6px", alignItems: "center", flex: "0 0 auto" });
    this.undoButton = element("button", "motionnft-drag-undo", {}, "Undo");
    this.clearButton = element("button", "motionnft-drag-clear", {}, "Clear");
    this.reloadButton = element("button", "motionnft-drag-reload", {}, "Reload image");
    this.count = element("span", "motionnft-drag-count", { marginLeft: "auto", opacity: "0.8" }, "0 drags");
    bar.append(this.undoButton, this.clearButton, this.reloadButton, this.count);
    // The stage takes the height left under the toolbar; the frame is the image's box inside it.
    this.stage = element("div", "motionnft-drag-stage", { position: "relative", flex: "1 1 0", minHeight: `${MIN_STAGE_HEIGHT}px`, overflow: "hidden", userSelect: "none", touchAction: "none", cursor: "crosshair", background: "rgba(127,127,127,0.15)" });
    this.frame = element("div", "motionnft-drag-frame", { position: "absolute", left: "0", top: "0", width: "100%", height: "100%" });
    this.image = element("img", "motionnft-drag-image", { display: "block", width: "100%", height: "100%", pointerEvents: "none" });
    this.image.alt = "";
    this.hint = element("div", "motionnft-drag-hint", { position: "absolute", inset: "0", display: "flex", alignItems: "center", justifyContent: "center", textAlign: "center", padding: "8px", opacity: "0.8" }, "Connect an image (or run once), then drag points on it.");
    this.overlay = svgElement("svg", { class: "motionnft-drag-overlay", preserveAspectRatio: "none" });
    Object.assign(this.overlay.style, { position: "absolute", inset: "0", width: "100%", height: "100%", pointerEvents: "none", overflow: "visible" });
    this.frame.append(this.image, this.overlay);
    this.stage.append(this.frame, this.hint);
    this.root.append(bar, this.stage);
    if (typeof ResizeObserver !== "undefined") {
      this.resizeObserver = new ResizeObserver(() => this.layout());
      this.resizeObserver.observe(this.stage);
    }

    this.undoButton.addEventListener("click", () => this.undo());
    this.clearButton.addEventListener("click", () => this.clear());
    this.reloadButton.addEventListener("click", () => this.refreshImage());
    this.stage.addEventListener("pointerdown", (event) => this.start(event));
    this.stage.addEventListener("pointermove", (event) => this.move(event));
    this.stage.addEventListener("pointerup", (event) => this.finish(event));
    this.stage.addEventListener("pointercancel", () => { this.pending = null; this.render(); });
    this.image.addEventListener("load", () => {
      this.size = [this.image.naturalWidth, this.image.naturalHeight];
      this.hint.style.display = "none";
      this.render();
    });
    this.readWidget();
  }

  readWidget() {
    const value = parseDrags(this.widget.value);
    this.drags = value.drags;
    if (value.size && !this.size) this.size = value.size;
    this.render();
  }

  /** Fit the frame (image + drawing) whole into the stage, keeping the image's aspect ratio. */
  layout() {
    const width = this.stage.clientWidth, height = this.stage.clientHeight;
    const [left, top, w, h] = containRect(this.size, width, height);
    Object.assign(this.frame.style, { left: `${left}px`, top: `${top}px`, width: `${w}px`, height: `${h}px` });
  }

  /** The event's position in image pixels; outside the image: null, or the nearest edge point with ``clamp``. */
  imagePoint(event, clamp = false) {
    const box = this.frame.getBoundingClientRect();
    if (!this.size || box.width === 0 || box.height === 0) return null;
    let x = ((event.clientX - box.left) / box.width) * this.size[0];
    let y = ((event.clientY - box.top) / box.height) * this.size[1];
    const inside = x >= 0 && y >= 0 && x <= this.size[0] && y <= this.size[1];
    if (!inside && !clamp) return null;
    x = Math.min(Math.max(x, 0), this.size[0]);
    y = Math.min(Math.max(y, 0), this.size[1]);
    return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
  }

  start(event) {
    if (event.button !== 0 || !this.image.src) return;
    this.layout();
    const point = this.imagePoint(event);
    if (!point) return;
    event.preventDefault();
    event.stopPropagation();
    this.stage.setPointerCapture?.(event.pointerId);
    this.pending = [...point, ...point];
    this.render();
  }

  move(event) {
    if (!this.pending) return;
    const point = this.imagePoint(event, true);
    if (!point) return;
    event.stopPropagation();
    this.pending = [this.pending[0], this.pending[1], ...point];
    this.render();
  }

  finish(event) {
    if (!this.pending) return;
    event.stopPropagation();
    const point = this.imagePoint(event, true) ?? this.pending.slice(2);
    const drag = [this.pending[0], this.pending[1], ...point];
    this.pending = null;
    if (Math.hypot(drag[2] - drag[0], drag[3] - drag[1]) >= 1) {
      this.drags.push(drag);
      this.commit();
    }
    this.render();
  }

  undo() {
    if (this.drags.length === 0) return;
    this.drags.pop();
    this.commit();
    this.render();
  }

  clear() {
    this.drags = [];
    this.commit();
    this.render();
  }

  commit() {
    const value = this.drags.length ? JSON.stringify({ size: this.size, drags: this.drags }) : "";
    this.widget.value = value;
    this.widget.callback?.(value);
    this.node.setDirtyCanvas?.(true, true);
    // Record the change for ComfyUI's undo history now (a button click ends after the
    // mouse-up that would otherwise record it).
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  render() {
    this.count.textContent = `${this.drags.length} drag${this.drags.length === 1 ? "" : "s"}`;
    this.undoButton.disabled = this.drags.length === 0;
    this.overlay.replaceChildren();
    if (!this.size) return;
    this.layout();
    this.overlay.setAttribute("viewBox", `0 0 ${this.size[0]} ${this.size[1]}`);
    const radius = Math.max(this.size[0], this.size[1]) / 120;
    const all = this.pending ? [...this.drags, this.pending] : this.drags;
    all.forEach(([x0, y0, x1, y1], index) => {
      const pending = this.pending && index === all.length - 1;
      const group = svgElement("g", { class: pending ? "motionnft-drag-pending" : "motionnft-drag-pair" });
      group.append(
        svgElement("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: "white", "stroke-width": radius * 0.9, "stroke-linecap": "round", opacity: 0.85 }),
        svgElement("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: "#222", "stroke-width": radius * 0.35, "stroke-linecap": "round" }),
        svgElement("circle", { cx: x0, cy: y0, r: radius, fill: "#e04a3a", stroke: "white", "stroke-width": radius * 0.3 }),
        svgElement("circle", { cx: x1, cy: y1, r: radius, fill: "#3aa75a", stroke: "white", "stroke-width": radius * 0.3 }),
      );
      this.overlay.append(group);
    });
  }

  setImage(url) {
    if (url && this.image.src !== url) this.image.src = url;
  }

  refreshImage() {
    const url = upstreamImageUrl(this.node);
    if (url) this.setImage(url);
  }
}

function linkById(graph, id) {
  const links = graph?.links;
  return links?.get?.(id) ?? links?.[id];
}

/** Where the image connected to the node's `image` input can be seen, before any run. */
function upstreamImageUrl(node) {
  const input = node.inputs?.find((slot) => slot.name === "image");
  const link = input?.link != null ? linkById(node.graph ?? app.graph, input.link) : null;
  const origin = link ? (node.graph ?? app.graph).getNodeById(link.origin_id) : null;
  if (!origin) return null;
  if (origin.imgs?.length) return origin.imgs[0].src;
  const fileWidget = origin.widgets?.find((w) => w.name === "image");
  if (origin.type === "LoadImage" && fileWidget?.value) return inputUrl(fileWidget.value);
  return null;
}

app.registerExtension({
  name: "MotionNFT.DragEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE.dragToFlow) return;
    chain(nodeType, "onNodeCreated", function () {
      const widget = this.widgets?.find((w) => w.name === "drags");
      if (!widget) return;
      this.motionnftDragEditor = new DragEditor(this, widget);
      addPanel(this, "motionnft_drag_editor", this.motionnftDragEditor.root, 220);
      const original = widget.callback;
      widget.callback = (...args) => {
        const result = original?.apply(widget, args);
        if (args[0] !== undefined) this.motionnftDragEditor.readWidget();
        return result;
      };
      requestAnimationFrame(() => this.motionnftDragEditor.refreshImage());
    });
    chain(nodeType, "onConfigure", function () {
      // A loaded workflow sets the widget values after creation.
      this.motionnftDragEditor?.readWidget();
      requestAnimationFrame(() => this.motionnftDragEditor?.refreshImage());
    });
    chain(nodeType, "onConnectionsChange", function () {
      this.motionnftDragEditor?.refreshImage();
    });
    chain(nodeType, "onExecuted", function (message) {
      const item = message?.motionnft_drag_image?.[0];
      if (item && this.motionnftDragEditor && !this.motionnftDragEditor.image.src) {
        this.motionnftDragEditor.setImage(viewUrl(item));
      }
    });
  },
});
