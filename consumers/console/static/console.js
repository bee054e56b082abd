// The review console's one script: unblur and grayscale toggles (remembered per reviewer), keyboard
// shortcuts, and "select all" on the list page. No framework; pages work without it, only slower.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var media = document.getElementById("media");
  var body = document.body;

  function savePreference(name, value) {
    var data = new FormData();
    data.append(name, value ? "true" : "false");
    fetch("/preferences", { method: "POST", body: data, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
  }

  if (media) {
    if (body.classList.contains("prefers-blur")) media.classList.add("blurred");
    if (body.classList.contains("prefers-grayscale")) media.classList.add("gray");
    var toggleBlur = function () { media.classList.toggle("blurred"); };
    var toggleGray = function () { media.classList.toggle("gray"); };
    media.addEventListener("click", toggleBlur);
    var blurButton = document.getElementById("toggle-blur");
    var grayButton = document.getElementById("toggle-gray");
    if (blurButton) blurButton.addEventListener("click", toggleBlur);
    if (grayButton) grayButton.addEventListener("click", toggleGray);
    var rememberBlur = document.getElementById("remember-blur");
    var rememberGray = document.getElementById("remember-gray");
    if (rememberBlur) rememberBlur.addEventListener("change", function () { savePreference("blur", rememberBlur.checked); });
    if (rememberGray) rememberGray.addEventListener("change", function () { savePreference("grayscale", rememberGray.checked); });
    window.moderationMedia = { toggleBlur: toggleBlur, toggleGray: toggleGray };
  }

  var form = document.getElementById("decide");
  var reason = document.getElementById("reason");

  document.addEventListener("keydown", function (event) {
    var typing = event.target && (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT");
    if (form && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      document.getElementById("submit-next").click();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (media && event.key === "u") { window.moderationMedia.toggleBlur(); return; }
    if (media && event.key === "g") { window.moderationMedia.toggleGray(); return; }
    if (!form) {
      if (event.key === "n") window.location.href = "/queue";
      return;
    }
    if (/^[1-9]$/.test(event.key)) {
      var box = form.querySelector('input[data-key="' + event.key + '"]');
      if (box) box.checked = !box.checked;
    } else if (event.key === "r" && reason) {
      event.preventDefault();
      reason.focus();
    } else if (event.key === "s") {
      document.getElementById("skip").click();
    } else if (event.key === "e") {
      if (reason && !reason.value.trim()) { reason.focus(); reason.placeholder = "why escalate?"; return; }
      document.getElementById("escalate").click();
    }
  });

  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.pick").forEach(function (box) { box.checked = all.checked; });
    });
  }
})();
