// The Judge Edit node's scores, as text on the node after it runs.
import { app } from "../../scripts/app.js";
import { NODE, PANEL_STYLE, addPanel, chain, element } from "./common.js";

app.registerExtension({
  name: "MotionNFT.JudgeSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE.judgeEdit) return;
    chain(nodeType, "onNodeCreated", function () {
      this.motionnftJudge = element("pre", "motionnft-judge-summary", { ...PANEL_STYLE, margin: "0", whiteSpace: "pre-wrap", font: "11px/1.35 monospace", maxHeight: "160px", overflow: "auto" }, "Run the graph to see the scores.");
      addPanel(this, "motionnft_judge_summary", this.motionnftJudge, 90);
    });
    chain(nodeType, "onExecuted", function (message) {
      if (this.motionnftJudge && Array.isArray(message?.text)) this.motionnftJudge.textContent = message.text.join("\n");
    });
  },
});
