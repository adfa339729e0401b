// The Motion Reward node's breakdown, on the node after it runs: the reward terms as bars,
// the flows and error maps as images, and the text summary.
import { app } from "../../scripts/app.js";
import { NODE, PANEL_STYLE, addPanel, chain, element, viewUrl } from "./common.js";

const TERMS = [
  ["d_mag", "D_mag", 1],
  ["d_dir", "D_dir", 1],
  ["m_move", "M_move", 1],
  ["combined", "D", 1],
  ["reward_continuous", "r_cont", 1],
  ["reward", "reward", 1],
  ["mas", "MAS", 100],
];
const MAP_CAPTIONS = ["flow of the edit", "flow of the ground truth", "magnitude error", "direction error"];

function buildPanel() {
  const root = element("div", "motionnft-reward", PANEL_STYLE);
  root.dataset.state = "empty";
  const bars = element("div", "motionnft-reward-bars", { display: "grid", gridTemplateColumns: "52px 1fr 52px", gap: "2px 6px", alignItems: "center" });
  const maps = element("div", "motionnft-reward-maps", { display: "grid", gridTemplateColumns: "repeat(4, 1fr)", gap: "4px", marginTop: "6px" });
  const summary = element("pre", "motionnft-reward-summary", { margin: "6px 0 0", whiteSpace: "pre-wrap", font: "10px/1.3 monospace", maxHeight: "90px", overflow: "auto" }, "Run the graph to see the reward terms.");
  const picker = element("select", "motionnft-reward-sample", { display: "none", marginBottom: "4px" });
  root.append(picker, bars, maps, summary);
  return { root, bars, maps, summary, picker };
}

function renderBars(panel, record) {
  panel.bars.replaceChildren();
  for (const [key, label, scale] of TERMS) {
    const value = Number(record[key]);
    const fraction = Math.max(0, Math.min(1, value / scale));
    const track = element("div", "motionnft-bar-track", { height: "10px", background: "rgba(127,127,127,0.25)", borderRadius: "3px" });
    const fill = element("div", "motionnft-bar", { height: "100%", width: `${(fraction * 100).toFixed(1)}%`, borderRadius: "3px", background: key.startsWith("d_") || key === "m_move" || key === "combined" ? "#d9782d" : key === "mas" ? "#2f9a5a" : "#3a7fc4" });
    fill.dataset.term = key;
    fill.dataset.value = String(value);
    track.append(fill);
    panel.bars.append(element("span", "", {}, label), track, element("span", "motionnft-bar-value", { textAlign: "right" }, key === "mas" ? value.toFixed(1) : value.toFixed(3)));
  }
  if (record.mas_hard_failure) panel.bars.append(element("span", "motionnft-hard-failure", { gridColumn: "1 / span 3", color: "#e06060" }, "MAS hard failure: the edit does not move"));
}

function renderMaps(panel, maps) {
  panel.maps.replaceChildren();
  (maps ?? []).forEach((item, index) => {
    const figure = element("figure", "motionnft-map", { margin: "0" });
    const img = element("img", "", { width: "100%", display: "block", borderRadius: "2px" });
    img.src = viewUrl(item);
    img.alt = MAP_CAPTIONS[index] ?? "map";
    figure.append(img, element("figcaption", "", { fontSize: "10px", opacity: "0.8" }, MAP_CAPTIONS[index] ?? ""));
    panel.maps.append(figure);
  });
}

app.registerExtension({
  name: "MotionNFT.RewardBreakdown",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE.motionReward) return;
    chain(nodeType, "onNodeCreated", function () {
      this.motionnftReward = buildPanel();
      addPanel(this, "motionnft_reward_breakdown", this.motionnftReward.root, 300);
    });
    chain(nodeType, "onExecuted", function (message) {
      const panel = this.motionnftReward;
      const records = message?.motionnft_reward;
      if (!panel || !Array.isArray(records) || records.length === 0) return;
      panel.picker.replaceChildren(...records.map((_, i) => element("option", "", {}, `edit #${i + 1}`)));
      panel.picker.style.display = records.length > 1 ? "block" : "none";
      panel.picker.onchange = () => renderBars(panel, records[panel.picker.selectedIndex]);
      renderBars(panel, records[0]);
      renderMaps(panel, message.motionnft_maps);
      panel.summary.textContent = Array.isArray(message.text) ? message.text.join("\n") : "";
      panel.root.dataset.state = "scored";
    });
  },
});
