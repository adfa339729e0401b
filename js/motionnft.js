// MotionNFT front-end extension: shows the summary a node computed (reward terms, mining
// counts), on the node. DOM widgets only (no canvas drawing), so it works with the new node
// renderer too.
import { app } from "../../scripts/app.js";

// Node -> the text its summary box shows before the first run.
const SUMMARY_NODES = {
  MotionNFT_MotionReward: "Run the graph to see the reward terms.",
  MotionNFT_JudgeEdit: "Run the graph to see the scores.",
  MotionNFT_MinePairs: "Run the graph to see the pairs kept and the rejections by reason.",
};

function summaryElement(placeholder) {
  const element = document.createElement("pre");
  element.className = "motionnft-summary";
  Object.assign(element.style, {
    margin: "0",
    padding: "4px 6px",
    font: "11px/1.35 monospace",
    whiteSpace: "pre-wrap",
    overflow: "auto",
    maxHeight: "160px",
    color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)",
    borderRadius: "4px",
  });
  element.textContent = placeholder;
  return element;
}

app.registerExtension({
  name: "MotionNFT.RewardSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const placeholder = SUMMARY_NODES[nodeData?.name];
    if (!placeholder) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.motionnftSummary = this.addDOMWidget("motionnft_summary", "motionnft_summary", summaryElement(placeholder), {
        serialize: false,
      });
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(message?.text) ? message.text.join("\n") : "";
      if (this.motionnftSummary && text) this.motionnftSummary.element.textContent = text;
    };
  },
});

// The LoRA loaders show what they matched, the scale and the file's metadata on the node.
const LORA_NODES = new Set(["MotionNFT_LoadLoraKontext", "MotionNFT_LoadLoraQwenImageEdit"]);

app.registerExtension({
  name: "MotionNFT.LoraSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!LORA_NODES.has(nodeData?.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const element = summaryElement("Run the graph to see the matched modules, the scale and the metadata.");
      this.motionnftSummary = this.addDOMWidget("motionnft_lora_info", "motionnft_summary", element, {
        serialize: false,
      });
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(message?.text) ? message.text.join("\n") : "";
      if (this.motionnftSummary && text) this.motionnftSummary.element.textContent = text;
    };
  },
});
