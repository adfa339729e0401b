// The flow colour legend on the flow nodes: the Middlebury colour wheel (hue = direction,
// saturation = speed) and, after Flow to Image runs, the speed the rim stands for.
import { app } from "../../scripts/app.js";
import { NODE, PANEL_STYLE, addPanel, chain, element } from "./common.js";

const WHEEL_URL = new URL("./assets/flow_wheel.png", import.meta.url).href;
const FLOW_NODES = new Set([NODE.opticalFlow, NODE.flowToImage]);

function buildLegend() {
  const root = element("div", "motionnft-flow-legend", { ...PANEL_STYLE, display: "flex", alignItems: "center", gap: "8px" });
  const wheel = element("img", "motionnft-flow-wheel", { width: "64px", height: "64px", flex: "none" });
  wheel.src = WHEEL_URL;
  wheel.alt = "flow colour wheel";
  const caption = element("div", "motionnft-flow-caption", {}, "colour = direction (right red, down yellow, left cyan, up blue); paler = slower");
  root.append(wheel, caption);
  return { root, caption };
}

app.registerExtension({
  name: "MotionNFT.FlowLegend",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!FLOW_NODES.has(nodeData?.name)) return;
    chain(nodeType, "onNodeCreated", function () {
      this.motionnftLegend = buildLegend();
      addPanel(this, "motionnft_flow_legend", this.motionnftLegend.root, 76);
    });
    chain(nodeType, "onExecuted", function (message) {
      const peak = message?.motionnft_flow_max?.[0];
      if (this.motionnftLegend && typeof peak === "number") {
        this.motionnftLegend.caption.textContent = `rim = ${peak.toPrecision(3)} px of motion; colour = direction, paler = slower`;
        this.motionnftLegend.root.dataset.peak = String(peak);
      }
    });
  },
});
