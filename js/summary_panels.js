// Text the server sends back after a run, shown on the node: the Judge Edit scores, the
// pairs the miner kept and its rejections by reason, and what a LoRA loader matched, its
// scale and the file's metadata.
import { app } from "../../scripts/app.js";
import { NODE, PANEL_STYLE, addPanel, chain, element } from "./common.js";

const PLACEHOLDERS = {
  [NODE.judgeEdit]: "Run the graph to see the scores.",
  [NODE.minePairs]: "Run the graph to see the pairs kept and the rejections by reason.",
  [NODE.loraKontext]: "Run the graph to see the matched modules, the scale and the metadata.",
  [NODE.loraQwen]: "Run the graph to see the matched modules, the scale and the metadata.",
};

app.registerExtension({
  name: "MotionNFT.SummaryPanels",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const placeholder = PLACEHOLDERS[nodeData?.name];
    if (!placeholder) return;
    chain(nodeType, "onNodeCreated", function () {
      this.motionnftSummary = element(
        "pre", "motionnft-summary",
        { ...PANEL_STYLE, margin: "0", whiteSpace: "pre-wrap", font: "11px/1.35 monospace", maxHeight: "160px", overflow: "auto" },
        placeholder,
      );
      addPanel(this, "motionnft_summary", this.motionnftSummary, 90);
    });
    chain(nodeType, "onExecuted", function (message) {
      if (this.motionnftSummary && Array.isArray(message?.text)) this.motionnftSummary.textContent = message.text.join("\n");
    });
  },
});
